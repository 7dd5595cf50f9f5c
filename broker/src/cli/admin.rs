//! The rabbitmqadmin-style commands: queues, declare, delete, purge, bind, unbind.

use broker::protocol::Binding;
use std::path::PathBuf;

use broker::{Client, ClientTls, ConnectOptions, QueueOptions};
use clap::{Args, Subcommand};

use super::config_file::ConfigFile;
use super::table::{Align, Table};
use super::{DEFAULT_SERVER, parse_key_value, to_headers};

// Where the broker is and who to log in as: flag, else environment variable, else the
// config file (`cli/config_file.rs`), else the default. (A `///` comment here would
// become the help text of every subcommand that flattens it.)
#[derive(Args)]
pub struct ServerArg {
    /// The broker's URL; may carry credentials: `ws://user:password@host:port`
    /// (`wss://` for a broker with TLS) [default: the config file's `server`, else
    /// ws://127.0.0.1:6789].
    #[arg(long, env = "BROKER_URL")]
    server: Option<String>,
    /// User to log in as (default: the URL's, else `guest`).
    #[arg(long, env = "BROKER_USER")]
    user: Option<String>,
    /// Password of --user.
    #[arg(long, env = "BROKER_PASSWORD", hide_env_values = true)]
    password: Option<String>,
    /// Virtual host to work in (default: the URL's path, else `/`).
    #[arg(long, env = "BROKER_VHOST")]
    vhost: Option<String>,
    #[command(flatten)]
    tls: TlsArgs,
}

/// How a `wss://` connection trusts the broker and, optionally, proves who it is.
#[derive(Args)]
pub struct TlsArgs {
    /// `wss://`: CA certificates (PEM) to trust for the broker's certificate [default:
    /// the system's].
    #[arg(long, env = "BROKER_CA")]
    ca: Option<PathBuf>,
    /// `wss://`: a client certificate (PEM) to log in with, as the user its CN names
    /// (the broker needs `--tls-ca`); no password is sent unless the URL or --user has one.
    #[arg(long, env = "BROKER_CERT", requires = "cert_key")]
    cert: Option<PathBuf>,
    /// The private key (PEM) of --cert. (Not `--key`: `broker bind` has a binding key.)
    #[arg(long, env = "BROKER_CERT_KEY", requires = "cert")]
    cert_key: Option<PathBuf>,
}

impl TlsArgs {
    /// The client's TLS settings, when any option was given (here or in `file`).
    pub fn client_tls(&self, file: &ConfigFile) -> anyhow::Result<Option<ClientTls>> {
        let ca = self.ca.as_deref().or(file.ca.as_deref());
        // A certificate and its key come together, from the flags or from the file.
        let identity = match (&self.cert, &self.cert_key) {
            (Some(cert), Some(key)) => Some((cert.as_path(), key.as_path())),
            _ => file.cert.as_deref().zip(file.cert_key.as_deref()),
        };
        if file.cert.is_some() != file.cert_key.is_some() {
            anyhow::bail!("the config file's `cert` and `cert_key` go together");
        }
        if ca.is_none() && identity.is_none() {
            return Ok(None);
        }
        Ok(Some(ClientTls::from_files(ca, identity)?))
    }
}

impl ServerArg {
    /// Connects to the broker as these arguments (and the config file) say.
    pub async fn connect(&self) -> anyhow::Result<Client> {
        self.connect_to(None).await
    }

    /// [`Self::connect`] to `vhost`, whatever the flags and the config file name.
    pub async fn connect_in(&self, vhost: &str) -> anyhow::Result<Client> {
        self.connect_to(Some(vhost)).await
    }

    async fn connect_to(&self, vhost: Option<&str>) -> anyhow::Result<Client> {
        let file = ConfigFile::load()?;
        let options = ConnectOptions {
            tls: self.tls.client_tls(&file)?,
            ..Default::default()
        };
        let url = self.url(&file)?;
        let url = match vhost {
            Some(vhost) => broker::client::credentials::with_vhost(&url, vhost),
            None => url,
        };
        Ok(Client::connect_with(&url, options).await?)
    }

    /// The URL to connect to, with the user, password and vhost in it when given.
    pub fn url(&self, file: &ConfigFile) -> anyhow::Result<String> {
        let server = self.server.as_ref().or(file.server.as_ref());
        let server = server.map_or(DEFAULT_SERVER, String::as_str);
        // Credentials in a URL given as a flag (or BROKER_URL) beat the file's user.
        let url_has_user = self.server.as_deref().is_some_and(|url| {
            broker::client::credentials::split_user_info(url)
                .1
                .is_some()
        });
        let (user, password) = match (&self.user, url_has_user) {
            (Some(user), _) => (Some(user), self.password.as_ref()),
            (None, true) => (None, None),
            (None, false) => (
                file.user.as_ref(),
                self.password.as_ref().or(file.password.as_ref()),
            ),
        };
        anyhow::ensure!(
            password.is_none() || user.is_some(),
            "a password (--password, BROKER_PASSWORD or the config file's `password`) needs \
             a user (--user, BROKER_USER or `user`)"
        );
        let url = url_with_user(server, user, password);
        Ok(match self.vhost.as_ref().or(file.vhost.as_ref()) {
            Some(vhost) => broker::client::credentials::with_vhost(&url, vhost),
            None => url,
        })
    }
}

/// `server` with `user` and `password` in place of the credentials it carried.
fn url_with_user(server: &str, user: Option<&String>, password: Option<&String>) -> String {
    let Some(user) = user else {
        return server.to_owned();
    };
    let (bare, _, _) = broker::client::credentials::split_credentials(server);
    let password = password.map_or("", String::as_str);
    let userinfo = broker::client::credentials::userinfo(user, password);
    match bare.split_once("://") {
        Some((scheme, rest)) => format!("{scheme}://{userinfo}{rest}"),
        None => bare,
    }
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
    let client = args.connect().await?;
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

pub async fn exchanges(args: ServerArg) -> anyhow::Result<()> {
    let client = args.connect().await?;
    let list = client.list_exchanges().await?;
    let mut table = Table::new(&[
        ("EXCHANGE", Align::Left),
        ("TYPE", Align::Left),
        ("BINDINGS", Align::Right),
        ("ROUTED", Align::Right),
        ("UNROUTABLE", Align::Right),
        ("FAILED", Align::Right),
        ("DURABLE", Align::Left),
        ("STATE", Align::Left),
    ]);
    for x in list.exchanges {
        let name = if x.exchange.is_empty() {
            "(default)".to_owned()
        } else {
            x.exchange
        };
        let state = match (x.quarantined_since, &x.quarantine_reason) {
            (Some(since), reason) => format!(
                "quarantined {} ({})",
                ago(since),
                reason.as_deref().unwrap_or("failing")
            ),
            _ => "ok".to_owned(),
        };
        table.row(vec![
            name,
            x.kind,
            x.bindings.to_string(),
            x.routed.to_string(),
            x.unroutable.to_string(),
            x.failed.to_string(),
            x.durable.to_string(),
            state,
        ]);
        if let Some(r) = &x.last_auto_rollback {
            table.note(format!(
                "its type auto-rolled back v{} -> v{} {}",
                r.from,
                r.to,
                ago(r.at)
            ));
        }
    }
    table.print();
    for name in list.unrestored {
        println!("{name}  (waiting for its plugin type to be loaded)");
    }
    client.close().await;
    Ok(())
}

/// A time in ms since the Unix epoch as RFC 3339 in UTC, to the millisecond
/// (`2026-12-06T16:20:01.123Z`).
pub fn rfc3339(at_ms: u64) -> String {
    let nanos = i128::from(at_ms) * 1_000_000;
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("{at_ms} ms"))
}

/// "12s ago" for a time in ms since the Unix epoch.
pub fn ago(at_ms: u64) -> String {
    let now = broker::clock::now_ms();
    let secs = now.saturating_sub(at_ms) / 1000;
    match secs {
        0..60 => format!("{secs}s ago"),
        60..3600 => format!("{}m{}s ago", secs / 60, secs % 60),
        _ => format!("{}h{}m ago", secs / 3600, secs / 60 % 60),
    }
}

pub async fn bindings(args: ServerArg) -> anyhow::Result<()> {
    let client = args.connect().await?;
    println!("EXCHANGE -> QUEUE  KEY  ARGUMENTS");
    for b in client.list_bindings().await? {
        let arguments = serde_json::to_string(&b.arguments)?;
        println!("{} -> {}  {:?}  {arguments}", b.exchange, b.queue, b.key);
    }
    client.close().await;
    Ok(())
}

pub async fn connections(args: ServerArg) -> anyhow::Result<()> {
    let client = args.connect().await?;
    let mut table = Table::new(&[
        ("CONN", Align::Right),
        ("PEER", Align::Left),
        ("CONFIRMS", Align::Right),
        ("UNACKED", Align::Right),
        ("CONSUMERS", Align::Left),
    ]);
    for c in client.list_connections().await? {
        let consumers: Vec<String> = c
            .consumers
            .iter()
            .map(|s| format!("{} ({})", s.queue, s.consumer_tag))
            .collect();
        table.row(vec![
            c.conn.to_string(),
            c.peer.to_string(),
            c.confirms.to_string(),
            c.unacked.to_string(),
            consumers.join(", "),
        ]);
    }
    table.print();
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
            let client = server.connect().await?;
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
            let client = server.connect().await?;
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
            let client = server.connect().await?;
            let messages = client.delete_queue(&name).await?;
            println!("queue {name} deleted with {messages} messages");
            client.close().await;
        }
        Delete::Exchange { name, server } => {
            let client = server.connect().await?;
            client.delete_exchange(&name).await?;
            println!("exchange {name} deleted");
            client.close().await;
        }
    }
    Ok(())
}

pub async fn purge(args: PurgeArgs) -> anyhow::Result<()> {
    let client = args.server.connect().await?;
    let messages = client.purge_queue(&args.queue).await?;
    println!("purged {messages} messages from {}", args.queue);
    client.close().await;
    Ok(())
}

pub async fn bind(args: BindArgs, bind: bool) -> anyhow::Result<()> {
    let client = args.server.connect().await?;
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
