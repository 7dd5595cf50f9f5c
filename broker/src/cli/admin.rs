//! The rabbitmqadmin-style commands: queues, declare, delete, purge, bind, unbind.

use anyhow::Context as _;
use broker::protocol::Binding;
use broker::{Client, QueueOptions};
use clap::{Args, Subcommand};

use super::{DEFAULT_SERVER, parse_key_value, to_headers};

#[derive(Args)]
pub struct ServerArg {
    #[arg(long, default_value = DEFAULT_SERVER)]
    pub server: String,
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
    /// Deploy a new version of a Wasm exchange plugin (a component built with plugin-sdk);
    /// NAME becomes an exchange type for `declare exchange --type NAME`.
    Deploy {
        name: String,
        path: std::path::PathBuf,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Activate an earlier version (default: the one before the active one).
    Rollback {
        name: String,
        #[arg(long)]
        to: Option<u64>,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Exchange types with their active version, hash and counters.
    List(ServerArg),
    /// Every deployed version of a plugin.
    History {
        name: String,
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
        Plugin::Deploy { name, path, server } => {
            let wasm =
                std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            let client = Client::connect(&server.server).await?;
            let v = client.deploy_plugin(&name, &wasm).await?;
            println!(
                "plugin {name} version {} active (sha256 {}, {} bytes)",
                v["version"],
                v["hash"].as_str().unwrap_or("?"),
                v["size_bytes"]
            );
            client.close().await;
        }
        Plugin::Rollback { name, to, server } => {
            let client = Client::connect(&server.server).await?;
            let v = client.rollback_plugin(&name, to).await?;
            println!("plugin {name} rolled back to version {}", v["version"]);
            client.close().await;
        }
        Plugin::List(server) => {
            let client = Client::connect(&server.server).await?;
            let list = client.list_plugins().await?;
            println!(
                "{:<20} {:>8} {:>8} {:>10} {:>8} {:>11}  SHA256",
                "PLUGIN", "KIND", "VERSION", "CALLS", "ERRORS", "MEAN_CALL"
            );
            for p in list["plugins"].as_array().into_iter().flatten() {
                let stats = &p["stats"];
                let calls = stats["calls"].as_u64().unwrap_or(0);
                let time = &stats["call_time"]; // a serialized Duration
                let total_ns = time["secs"].as_u64().unwrap_or(0) * 1_000_000_000
                    + time["nanos"].as_u64().unwrap_or(0);
                let mean = if calls > 0 {
                    format!("{:.1}us", total_ns as f64 / calls as f64 / 1e3)
                } else {
                    "-".into()
                };
                let version = match (&p["active_version"], p["bundled"].as_bool()) {
                    (serde_json::Value::Number(n), _) => n.to_string(),
                    (_, Some(true)) => "bundled".into(),
                    _ => "file".into(),
                };
                let hash = p["hash"].as_str().map_or("-", |h| &h[..h.len().min(12)]);
                println!(
                    "{:<20} {:>8} {:>8} {:>10} {:>8} {:>11}  {hash}",
                    p["name"].as_str().unwrap_or("?"),
                    "exchange",
                    version,
                    calls,
                    stats["errors"].as_u64().unwrap_or(0),
                    mean
                );
            }
            client.close().await;
        }
        Plugin::History { name, server } => {
            let client = Client::connect(&server.server).await?;
            let history = client.plugin_history(&name).await?;
            for v in history["versions"].as_array().into_iter().flatten() {
                println!(
                    "{}{:>4}  {}  deployed_at={} by={} size={}",
                    if v["active"] == true { "*" } else { " " },
                    v["version"],
                    v["hash"].as_str().unwrap_or("?"),
                    v["deployed_at"],
                    v["deployed_by"].as_str().unwrap_or("?"),
                    v["size_bytes"]
                );
            }
            client.close().await;
        }
    }
    Ok(())
}
