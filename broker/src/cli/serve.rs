//! `broker serve`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use broker::server::MemoryWatermark;
use broker::{Broker, Config};
use clap::{Args, ValueEnum};

#[derive(Args)]
pub struct ServeArgs {
    /// Address to listen on for WebSocket clients.
    #[arg(long, default_value = Config::DEFAULT_LISTEN)]
    listen: SocketAddr,
    /// Directory of the database file (created if missing).
    #[arg(long, default_value = "./data")]
    data_dir: PathBuf,
    /// Log level or filter (RUST_LOG overrides it).
    #[arg(long, default_value = "info")]
    log: String,
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Most simultaneous connections.
    #[arg(long, default_value_t = Config::DEFAULT_MAX_CONNECTIONS)]
    max_connections: usize,
    /// Most simultaneous connections from one IP address.
    #[arg(long, default_value_t = Config::DEFAULT_MAX_CONNECTIONS_PER_SOURCE)]
    max_connections_per_source: usize,
    /// Seconds a client may take to complete the WebSocket handshake.
    #[arg(long, default_value_t = Config::DEFAULT_HANDSHAKE_TIMEOUT.as_secs_f64(), value_parser = positive_secs)]
    handshake_timeout: f64,
    /// Seconds a connection may stay open before its first request.
    #[arg(long, default_value_t = Config::DEFAULT_FIRST_REQUEST_TIMEOUT.as_secs_f64(), value_parser = positive_secs)]
    first_request_timeout: f64,
    /// Seconds between the broker's WebSocket pings; a peer silent for two intervals is
    /// disconnected and its unacked messages return to their queues. 0: no heartbeats.
    #[arg(long, default_value_t = Config::DEFAULT_HEARTBEAT.as_secs_f64(), value_parser = non_negative_secs)]
    heartbeat: f64,
    /// Seconds a delivery may stay unacked before its consumer's connection (an AMQP
    /// channel) is closed and its unacked messages return to their queues (RabbitMQ's
    /// `consumer_timeout`). 0: no limit.
    #[arg(long, default_value_t = Config::DEFAULT_CONSUMER_TIMEOUT.as_secs_f64(), value_parser = non_negative_secs)]
    consumer_timeout: f64,
    /// Shards the queues are partitioned into (a new queue goes to the one with the
    /// fewest), each owned by its own router task, so routing uses every core. Default:
    /// one per core (docs/architecture.md, "Queue shards").
    #[arg(long, default_value_t = Config::default_queue_shards() as u64, value_parser = clap::value_parser!(u64).range(1..=64))]
    queue_shards: u64,
    /// Runs each queue shard on a thread of its own, and each client connection on the
    /// thread of the shard whose queue it first consumes from (or publishes to), so a
    /// message wakes fewer threads (docs/architecture.md, "Shard threads"). `false`:
    /// shards and connections share tokio's pool of a worker per core.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    shard_threads: bool,
    /// Publishes one connection may have waiting for their answer (in confirm mode, the
    /// confirm); past this the broker stops reading that connection until answers go out.
    #[arg(long, default_value_t = Config::DEFAULT_MAX_UNCONFIRMED as u64, value_parser = clap::value_parser!(u64).range(1..))]
    max_unconfirmed: u64,
    /// Stored versions kept per plugin: after each deploy older ones are deleted (never
    /// the active version or the one before it). Default: all are kept.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    keep_plugin_versions: Option<u64>,
    /// Resident memory past which publishing connections are blocked until it falls
    /// (memory alarm): a share of the machine's memory (`0.4`) or a size (`512MiB`).
    #[arg(long, default_value = "0.4", value_parser = MemoryWatermark::parse)]
    memory_high_watermark: MemoryWatermark,
    /// Deploy every NAME.wasm here at startup as plugin NAME (a new version when the
    /// bytes differ from the active one).
    #[arg(long)]
    plugins_dir: Option<PathBuf>,
    /// Keep watching --plugins-dir: a changed NAME.wasm is deployed once it stops changing.
    #[arg(long, requires = "plugins_dir")]
    watch: bool,
    /// Largest request frame in bytes.
    #[arg(long, default_value_t = Config::DEFAULT_MAX_FRAME_BYTES)]
    max_frame_bytes: usize,
    /// Address of the management HTTP listener: the page at `/`, `/metrics`, `/healthz`,
    /// `/readyz` and the JSON API under `/api`; or `off`, as for the other listeners.
    #[arg(long, default_value = Config::DEFAULT_HTTP, value_parser = listen_or_off, conflicts_with = "no_http")]
    http: Listen,
    /// The same as `--http off` (kept for scripts written before it).
    #[arg(long, hide = true)]
    no_http: bool,
    /// Address of the AMQP 0-9-1 listener for RabbitMQ clients (docs/amqp.md), or `off`.
    #[arg(long, default_value = Config::DEFAULT_AMQP, value_parser = amqp_address)]
    amqp: AmqpListen,
    /// Address of the STOMP listener (TCP; docs/stomp.md), or `off`. STOMP over the
    /// WebSocket listener (subprotocol v12.stomp) is on either way.
    #[arg(long, default_value = Config::DEFAULT_STOMP, value_parser = listen_or_off)]
    stomp: Listen,
    /// Address of the AMQP-over-TLS listener (RabbitMQ's `listeners.ssl`), or `off`;
    /// it uses the --tls-cert certificates. Default: 127.0.0.1:5671 with --tls-cert, else off.
    #[arg(long, value_parser = listen_or_off)]
    amqps: Option<Listen>,
    /// Address of the STOMP-over-TLS listener, or `off`; it uses the --tls-cert
    /// certificates. Default: 127.0.0.1:61614 with --tls-cert, else off.
    #[arg(long, value_parser = listen_or_off)]
    stomps: Option<Listen>,
    /// Origin (`http://host:port`) of a web page allowed to open WebSocket connections;
    /// repeat for several. Default: the management page's own.
    #[arg(long = "allowed-origin")]
    allowed_origins: Vec<String>,
    /// `Host` header value the management HTTP listener answers to; repeat for several.
    /// Default: its own address (and localhost:PORT on loopback).
    #[arg(long = "http-allowed-host")]
    http_allowed_hosts: Vec<String>,
    /// Seconds a management page login lasts before its session cookie is refused.
    #[arg(long, default_value_t = Config::DEFAULT_HTTP_SESSION_TIMEOUT.as_secs_f64(), value_parser = positive_secs)]
    http_session_timeout: f64,
    /// TLS: the server's certificate chain (PEM). With --tls-key, the WebSocket listener
    /// speaks only `wss://` and the management listener only `https://`, and the
    /// --amqps and --stomps listeners start.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// TLS: the private key of --tls-cert (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// TLS: CA certificates (PEM) whose client certificates log in as the user their
    /// subject CN names (no password); clients without a certificate log in as before.
    #[arg(long, requires = "tls_cert")]
    tls_ca: Option<PathBuf>,
}

/// `--http`, `--stomp`, `--amqps`, `--stomps`: a listener's address, or `off`.
#[derive(Clone, Copy)]
struct Listen(Option<SocketAddr>);

fn listen_or_off(text: &str) -> Result<Listen, String> {
    if text == "off" {
        return Ok(Listen(None));
    }
    text.parse()
        .map(|addr| Listen(Some(addr)))
        .map_err(|_| format!("`{text}` is not an address (HOST:PORT) or `off`"))
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// The broker's configuration from `broker serve`'s arguments.
fn config(args: ServeArgs) -> Config {
    let mut config = Config::new(&args.data_dir);
    config.listen = args.listen;
    config.max_connections = args.max_connections;
    config.max_connections_per_source = args.max_connections_per_source;
    config.handshake_timeout = Duration::from_secs_f64(args.handshake_timeout);
    config.first_request_timeout = Duration::from_secs_f64(args.first_request_timeout);
    config.heartbeat = (args.heartbeat > 0.0).then(|| Duration::from_secs_f64(args.heartbeat));
    config.consumer_timeout =
        (args.consumer_timeout > 0.0).then(|| Duration::from_secs_f64(args.consumer_timeout));
    config.max_unconfirmed = args.max_unconfirmed as usize;
    config.queue_shards = args.queue_shards as usize;
    config.shard_threads = args.shard_threads;
    config.keep_plugin_versions = args.keep_plugin_versions;
    config.memory_high_watermark = args.memory_high_watermark;
    config.max_frame_bytes = args.max_frame_bytes;
    config.plugins_dir = args.plugins_dir;
    config.watch_plugins = args.watch;
    config.http = args.http.0.filter(|_| !args.no_http);
    config.amqp = args.amqp.0;
    config.stomp = args.stomp.0;
    config.allowed_origins = args.allowed_origins;
    config.http_allowed_hosts = args.http_allowed_hosts;
    config.http_session_timeout = Duration::from_secs_f64(args.http_session_timeout);
    config.tls = match (args.tls_cert, args.tls_key) {
        (Some(cert), Some(key)) => Some(broker::server::TlsConfig {
            cert,
            key,
            client_ca: args.tls_ca,
        }),
        _ => None,
    };
    // The TLS listeners default on when there are certificates, as RabbitMQ's examples do.
    let tls_default = |default: &str| {
        config
            .tls
            .is_some()
            .then(|| default.parse().expect("valid default address"))
    };
    config.amqps = match args.amqps {
        Some(listen) => listen.0,
        None => tls_default(Config::DEFAULT_AMQPS),
    };
    config.stomps = match args.stomps {
        Some(listen) => listen.0,
        None => tls_default(Config::DEFAULT_STOMPS),
    };
    config
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    super::init_logging(&args.log, matches!(args.log_format, LogFormat::Json));
    let db_file = args.data_dir.join(broker::store::DB_FILE);
    let config = config(args);
    let broker = Broker::start(config).await.context("starting the broker")?;
    // Scripts and tests read this line to learn the addresses (e.g. with --listen ...:0).
    let http = match broker.http_url() {
        Some(url) => format!(", management on {url}"),
        None => String::new(),
    };
    let amqp = match broker.amqp_addr() {
        Some(addr) => format!(", AMQP on amqp://{addr}"),
        None => String::new(),
    };
    let stomp = match broker.stomp_addr() {
        Some(addr) => format!(", STOMP on {addr}"),
        None => String::new(),
    };
    let amqps = match broker.amqps_addr() {
        Some(addr) => format!(", AMQP over TLS on amqps://{addr}"),
        None => String::new(),
    };
    let stomps = match broker.stomps_addr() {
        Some(addr) => format!(", STOMP over TLS on {addr}"),
        None => String::new(),
    };
    println!(
        "broker listening on {} (data: {}){amqp}{amqps}{stomp}{stomps}{http}",
        broker.url(),
        db_file.display()
    );
    shutdown_signal().await;
    tracing::info!("shutting down");
    broker.shutdown().await;
    Ok(())
}

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// `--amqp`: an address, or `None` for `off`.
#[derive(Clone, Copy)]
struct AmqpListen(Option<SocketAddr>);

fn amqp_address(text: &str) -> Result<AmqpListen, String> {
    match text {
        "off" => Ok(AmqpListen(None)),
        addr => addr
            .parse()
            .map(|addr| AmqpListen(Some(addr)))
            .map_err(|_| format!("`{addr}` is neither an address (HOST:PORT) nor `off`")),
    }
}

/// A number of seconds greater than zero.
fn positive_secs(text: &str) -> Result<f64, String> {
    match non_negative_secs(text)? {
        0.0 => Err("must be greater than 0".into()),
        secs => Ok(secs),
    }
}

/// A number of seconds, zero or more (at most a year).
fn non_negative_secs(text: &str) -> Result<f64, String> {
    let secs: f64 = text
        .parse()
        .map_err(|_| format!("`{text}` is not a number of seconds"))?;
    if !(0.0..=31_536_000.0).contains(&secs) {
        return Err("must be between 0 and 31536000 seconds".into());
    }
    Ok(secs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Serve {
        #[command(flatten)]
        args: ServeArgs,
    }

    fn config_of(args: &[&str]) -> Config {
        let parsed = Serve::try_parse_from(std::iter::once("serve").chain(args.iter().copied()))
            .unwrap_or_else(|e| panic!("{args:?}: {e}"));
        config(parsed.args)
    }

    const TLS: [&str; 4] = ["--tls-cert", "cert.pem", "--tls-key", "key.pem"];

    #[test]
    fn certificates_turn_the_tls_listeners_on_at_the_standard_ports() {
        let config = config_of(&TLS);
        assert_eq!(config.amqps, Some("127.0.0.1:5671".parse().unwrap()));
        assert_eq!(config.stomps, Some("127.0.0.1:61614".parse().unwrap()));
        let plain = config_of(&[]);
        assert_eq!((plain.amqps, plain.stomps), (None, None));
    }

    #[test]
    fn a_tls_listener_can_be_moved_or_turned_off() {
        let mut args = TLS.to_vec();
        args.extend(["--amqps", "0.0.0.0:6671", "--stomps", "off"]);
        let config = config_of(&args);
        assert_eq!(config.amqps, Some("0.0.0.0:6671".parse().unwrap()));
        assert_eq!(config.stomps, None);
    }
}
