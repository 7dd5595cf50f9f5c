//! How to run a broker: every setting `broker serve` has, with its default.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::connection::ConnLimits;
use super::{MemoryWatermark, TlsConfig};
use crate::plugin::PluginHost;
use crate::store;

/// How to run a broker.
#[derive(Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// Connections beyond this wait to be accepted.
    pub max_connections: usize,
    /// Connections from one IP address beyond this are refused (closed at once).
    pub max_connections_per_source: usize,
    /// Largest request frame answered normally; a larger one gets `frame_too_large`.
    pub max_frame_bytes: usize,
    /// How long a client may take to complete the WebSocket handshake: sockets that
    /// never speak give their connection slot back after this.
    pub handshake_timeout: Duration,
    /// How long a connection may stay open before its first request.
    pub first_request_timeout: Duration,
    /// The interval of the broker's WebSocket pings; a peer that sends nothing (not even
    /// a pong) for two intervals is disconnected and its unacked messages return to their
    /// queues. `None`: no heartbeats.
    pub heartbeat: Option<Duration>,
    /// Publishes one connection may have waiting for their answer (the confirm, in
    /// confirm mode); past this the broker stops reading the connection until answers
    /// go out.
    pub max_unconfirmed: usize,
    /// How long a delivery may stay unacked before its consumer's connection (an AMQP
    /// channel) is closed with `precondition_failed` and its unacked messages return to
    /// their queues, as RabbitMQ's `consumer_timeout`. `None`: no limit.
    pub consumer_timeout: Option<Duration>,
    /// Shards the queues are partitioned into, each queue on one (where there were fewest),
    /// each shard owned by its own router task (docs/architecture.md, "Queue shards").
    /// Default: [`Config::default_queue_shards`].
    pub queue_shards: usize,
    /// Each queue shard on a thread of its own, with the connections that use its queues
    /// (`shard_threads`; the default); off: shards and connections on tokio's pool.
    pub shard_threads: bool,
    /// Resident memory past which publishing connections are blocked (memory alarm).
    pub memory_high_watermark: MemoryWatermark,
    /// The exchange types; `None` starts a host with the standard exchanges (`direct`,
    /// `topic`, `fanout`, `headers`) and default limits.
    pub plugins: Option<PluginHost>,
    /// Custom exchange plugins loaded at startup: every `NAME.wasm` becomes type `NAME`.
    pub plugins_dir: Option<PathBuf>,
    /// Keep deploying changed files of `plugins_dir` while running.
    pub watch_plugins: bool,
    /// Take compiled plugin code from the store instead of compiling at startup.
    pub artifact_cache: bool,
    /// Where to serve the management HTTP API, metrics and page; `None`: no HTTP.
    pub http: Option<SocketAddr>,
    /// Where to serve AMQP 0-9-1 (docs/amqp.md); `None`: no AMQP listener.
    pub amqp: Option<SocketAddr>,
    /// Where to accept STOMP over TCP (docs/stomp.md); `None`: nowhere. STOMP over the
    /// WebSocket listener is always on (subprotocols `v12.stomp`, `v11.stomp`,
    /// `v10.stomp`).
    pub stomp: Option<SocketAddr>,
    /// Where to serve AMQP over TLS (RabbitMQ's `listeners.ssl`, docs/amqp.md) with the
    /// [`Config::tls`] certificates; `None`: nowhere. Needs `tls`.
    pub amqps: Option<SocketAddr>,
    /// Where to accept STOMP over TLS (docs/stomp.md) with the [`Config::tls`]
    /// certificates; `None`: nowhere. Needs `tls`.
    pub stomps: Option<SocketAddr>,
    /// Origins (`http://host:port`) of web pages allowed to open WebSocket connections;
    /// empty: only the management page's own. Requests without `Origin` (programs, not
    /// browsers) are not affected.
    pub allowed_origins: Vec<String>,
    /// `Host` header values the management HTTP listener answers to (defeats DNS
    /// rebinding); empty: its own address, and `localhost:PORT` on loopback.
    pub http_allowed_hosts: Vec<String>,
    /// How long a management page login lasts (its session cookie is refused after).
    pub http_session_timeout: Duration,
    /// Stored versions kept per plugin after each deploy (older ones are deleted, but
    /// never the active one or the one before it); `None`: all.
    pub keep_plugin_versions: Option<u64>,
    /// TLS for the WebSocket and the HTTP listener: when set, both accept TLS only (a
    /// plaintext client fails the handshake) and, with a client CA, log in clients by
    /// their certificate's CN. The `amqps` and `stomps` listeners use the same
    /// certificates; the plain `amqp` and `stomp` listeners stay plain.
    pub tls: Option<TlsConfig>,
    /// Tests of panic containment only: a connection receiving
    /// [`INJECTED_PANIC_FRAME`] panics.
    #[doc(hidden)]
    pub inject_connection_panics: bool,
    /// Durability tests only: the storage to open instead of `data_dir`'s database file
    /// (a simulated disk that loses power, `store::power_cut`). `None`: the file.
    #[doc(hidden)]
    pub storage_backend: Option<store::BackendFactory>,
}

impl Config {
    pub const DEFAULT_LISTEN: &str = "127.0.0.1:6789";
    pub const DEFAULT_MAX_FRAME_BYTES: usize = 16 * 1024 * 1024;
    /// The CLI's default for `--http` (a library `Config` has no HTTP unless asked).
    pub const DEFAULT_HTTP: &str = "127.0.0.1:6790";
    /// The CLI's default for `--amqp` (a library `Config` has no AMQP unless asked).
    pub const DEFAULT_AMQP: &str = "127.0.0.1:5672";
    /// The CLI's default for `--stomp` (a library `Config` has no STOMP listener unless
    /// asked): the usual STOMP port.
    pub const DEFAULT_STOMP: &str = "127.0.0.1:61613";
    /// The CLI's default for `--amqps` when TLS is configured: the usual AMQPS port.
    pub const DEFAULT_AMQPS: &str = "127.0.0.1:5671";
    /// The CLI's default for `--stomps` when TLS is configured: the usual STOMP TLS port.
    pub const DEFAULT_STOMPS: &str = "127.0.0.1:61614";
    pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
    pub const DEFAULT_MAX_CONNECTIONS_PER_SOURCE: usize = 1_000;
    pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
    pub const DEFAULT_FIRST_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
    pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(30);
    /// RabbitMQ's default `consumer_timeout`: 30 minutes.
    pub const DEFAULT_CONSUMER_TIMEOUT: Duration = Duration::from_secs(30 * 60);

    /// One queue shard per core (at most 64), each on a thread of its own with the
    /// connections that use its queues ([`Config::shard_threads`]). On this project's
    /// 2-core machine two shard threads use 10-14 % less CPU per message than one shard on
    /// tokio's pool, at the same or higher rates, and no thread does half the work with 4
    /// queue pairs (docs/performance.md, "Session 16").
    pub fn default_queue_shards() -> usize {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        cores.clamp(1, 64)
    }
    pub const DEFAULT_MAX_UNCONFIRMED: usize = 10_000;
    /// RabbitMQ's management login lasts 8 hours too.
    pub const DEFAULT_HTTP_SESSION_TIMEOUT: Duration = Duration::from_secs(8 * 3600);

    /// Defaults for everything but the data directory.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Config {
            listen: Self::DEFAULT_LISTEN.parse().expect("valid default address"),
            data_dir: data_dir.into(),
            max_connections: Self::DEFAULT_MAX_CONNECTIONS,
            max_connections_per_source: Self::DEFAULT_MAX_CONNECTIONS_PER_SOURCE,
            max_frame_bytes: Self::DEFAULT_MAX_FRAME_BYTES,
            handshake_timeout: Self::DEFAULT_HANDSHAKE_TIMEOUT,
            first_request_timeout: Self::DEFAULT_FIRST_REQUEST_TIMEOUT,
            heartbeat: Some(Self::DEFAULT_HEARTBEAT),
            consumer_timeout: Some(Self::DEFAULT_CONSUMER_TIMEOUT),
            queue_shards: Self::default_queue_shards(),
            shard_threads: true,
            max_unconfirmed: Self::DEFAULT_MAX_UNCONFIRMED,
            memory_high_watermark: MemoryWatermark::DEFAULT,
            plugins: None,
            plugins_dir: None,
            watch_plugins: false,
            artifact_cache: true,
            http: None,
            amqp: None,
            stomp: None,
            amqps: None,
            stomps: None,
            allowed_origins: Vec::new(),
            http_allowed_hosts: Vec::new(),
            http_session_timeout: Self::DEFAULT_HTTP_SESSION_TIMEOUT,
            keep_plugin_versions: None,
            tls: None,
            inject_connection_panics: false,
            storage_backend: None,
        }
    }

    pub(super) fn conn_limits(&self) -> ConnLimits {
        ConnLimits {
            max_frame_bytes: self.max_frame_bytes,
            handshake_timeout: self.handshake_timeout,
            first_request_timeout: self.first_request_timeout,
            heartbeat: self.heartbeat,
            max_unconfirmed: self.max_unconfirmed.max(1),
            inject_panics: self.inject_connection_panics,
        }
    }
}
