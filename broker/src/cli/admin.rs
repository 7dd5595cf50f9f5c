//! The rabbitmqadmin-style commands: queues, declare, delete, purge, bind, unbind.

use anyhow::Context as _;
use broker::protocol::Binding;
use broker::{Client, QueueOptions};
use clap::{Args, Subcommand};

use super::{DEFAULT_SERVER, parse_key_value, to_headers};

#[derive(Args)]
pub struct ServerArg {
    #[arg(long, default_value = DEFAULT_SERVER)]
    server: String,
}

#[derive(Subcommand)]
pub enum Declare {
    Queue {
        name: String,
        #[arg(long)]
        durable: bool,
        #[arg(long)]
        auto_delete: bool,
        /// A queue argument, KEY=VALUE (VALUE parsed as JSON when it can be). Repeatable.
        #[arg(long = "arg", value_parser = parse_key_value)]
        args: Vec<(String, serde_json::Value)>,
        #[command(flatten)]
        server: ServerArg,
    },
    Exchange {
        name: String,
        /// The exchange type: a loaded exchange plugin (direct, topic, fanout, headers, ...).
        #[arg(long = "type")]
        kind: String,
        #[arg(long)]
        durable: bool,
        #[arg(long = "arg", value_parser = parse_key_value)]
        args: Vec<(String, serde_json::Value)>,
        #[command(flatten)]
        server: ServerArg,
    },
}

#[derive(Subcommand)]
pub enum Delete {
    Queue {
        name: String,
        #[command(flatten)]
        server: ServerArg,
    },
    Exchange {
        name: String,
        #[command(flatten)]
        server: ServerArg,
    },
}

#[derive(Subcommand)]
pub enum Plugin {
    /// Upload a Wasm exchange plugin (a component built with plugin-sdk); NAME becomes an
    /// exchange type for `declare exchange --type NAME`.
    Load {
        name: String,
        path: std::path::PathBuf,
        #[command(flatten)]
        server: ServerArg,
    },
}

#[derive(Args)]
pub struct PurgeArgs {
    queue: String,
    #[command(flatten)]
    server: ServerArg,
}

#[derive(Args)]
pub struct BindArgs {
    exchange: String,
    queue: String,
    /// The binding key (a routing key, or a pattern for topic exchanges).
    #[arg(long, default_value = "")]
    key: String,
    #[arg(long = "arg", value_parser = parse_key_value)]
    args: Vec<(String, serde_json::Value)>,
    #[command(flatten)]
    server: ServerArg,
}

pub async fn queues(args: ServerArg) -> anyhow::Result<()> {
    let client = Client::connect(&args.server).await?;
    let queues = client.list_queues().await?;
    let width = queues
        .iter()
        .map(|q| q.queue.len())
        .max()
        .unwrap_or(0)
        .max(5);
    println!(
        "{:<width$}  {:>9}  {:>9}  {:>9}  DURABLE",
        "QUEUE", "READY", "UNACKED", "CONSUMERS"
    );
    for q in queues {
        println!(
            "{:<width$}  {:>9}  {:>9}  {:>9}  {}",
            q.queue, q.ready, q.unacked, q.consumers, q.durable
        );
    }
    client.close().await;
    Ok(())
}

pub async fn declare(what: Declare) -> anyhow::Result<()> {
    match what {
        Declare::Queue {
            name,
            durable,
            auto_delete,
            args,
            server,
        } => {
            let client = Client::connect(&server.server).await?;
            let options = QueueOptions {
                durable,
                auto_delete,
                arguments: to_headers(args),
                ..Default::default()
            };
            let info = client.declare_queue(&name, options).await?;
            println!("queue {} declared ({} ready)", info.queue, info.ready);
            client.close().await;
        }
        Declare::Exchange {
            name,
            kind,
            durable,
            args,
            server,
        } => {
            let client = Client::connect(&server.server).await?;
            client
                .declare_exchange(&name, &kind, durable, to_headers(args))
                .await?;
            println!("exchange {name} ({kind}) declared");
            client.close().await;
        }
    }
    Ok(())
}

pub async fn delete(what: Delete) -> anyhow::Result<()> {
    match what {
        Delete::Queue { name, server } => {
            let client = Client::connect(&server.server).await?;
            let messages = client.delete_queue(&name).await?;
            println!("queue {name} deleted with {messages} messages");
            client.close().await;
        }
        Delete::Exchange { name, server } => {
            let client = Client::connect(&server.server).await?;
            client.delete_exchange(&name).await?;
            println!("exchange {name} deleted");
            client.close().await;
        }
    }
    Ok(())
}

pub async fn purge(args: PurgeArgs) -> anyhow::Result<()> {
    let client = Client::connect(&args.server.server).await?;
    let messages = client.purge_queue(&args.queue).await?;
    println!("purged {messages} messages from {}", args.queue);
    client.close().await;
    Ok(())
}

pub async fn bind(args: BindArgs, bind: bool) -> anyhow::Result<()> {
    let client = Client::connect(&args.server.server).await?;
    let binding = Binding {
        exchange: args.exchange,
        queue: args.queue,
        key: args.key,
        arguments: to_headers(args.args),
    };
    let verb = if bind { "bound" } else { "unbound" };
    let line = format!(
        "{} {verb} {} (key `{}`)",
        binding.queue, binding.exchange, binding.key
    );
    if bind {
        client.bind(binding).await?;
    } else {
        client.unbind(binding).await?;
    }
    println!("{line}");
    client.close().await;
    Ok(())
}

pub async fn plugin(what: Plugin) -> anyhow::Result<()> {
    match what {
        Plugin::Load { name, path, server } => {
            let wasm =
                std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            let client = Client::connect(&server.server).await?;
            let info = client.load_plugin(&name, &wasm).await?;
            println!("plugin {name} loaded: {info}");
            client.close().await;
        }
    }
    Ok(())
}
