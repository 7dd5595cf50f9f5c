//! `broker bench`: throughput, latency, backlog and recovery scenarios against a running
//! broker or an embedded one. Each run prints exactly one line of figures:
//!
//! `scenario=NAME msgs=N secs=S rate=R p50_us=.. p99_us=.. p999_us=.. publish_confirm_p99_us=..`
//!
//! followed by scenario-specific `key=value` fields and, last, `encoding=json|binary`; a
//! figure a scenario cannot measure is printed as `-`. Every scenario declares its own queues and exchanges (named after
//! the scenario and the process id) and deletes them when done.

mod amqp;
mod backlog;
mod clients;
mod flood;
mod handler;
mod isolation;
mod latency;
mod plugins;
mod procfs;
mod report;
mod soak;
mod stomp;
mod throughput;

use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use anyhow::Context as _;
use broker::protocol::Encoding;
use broker::{Broker, Client, ClientError, Config, ConnectOptions};
use clap::{Args, ValueEnum};

use super::DEFAULT_SERVER;
use amqp::ProtocolArg;
use report::{Report, merged, new_histogram};

const OUTPUT_HELP: &str = "\
Prints one line per run:
  scenario=NAME msgs=N secs=S rate=R p50_us=.. p99_us=.. p999_us=.. publish_confirm_p99_us=..
then scenario-specific fields, the broker's CPU over the measured interval
  broker_cpu_cores=X.XX max_thread_share=0.NN max_thread=NAME
(from /proc/PID/task/*/stat: CPU seconds per wall second over all the broker's threads, the
busiest thread's share of that and its name; the broker's PID is --broker-pid, else the local
process listening on --server's port, found through /proc/net/tcp{,6} and /proc/*/fd; with
--embedded it is the bench's own process; `-` when none is readable),
and encoding=json|binary|amqp|stomp last (amqp: --protocol amqp, clients through lapin; stomp:
--protocol stomp, STOMP 1.2 over TCP). p50/p99/p999 are end-to-end latencies (publish to delivery);
`-` marks a figure the scenario does not measure. With --embedded, client and broker share
the process (and its CPU and memory).

Default --msgs: 200000 (persistent, transient, topic), 100000 (fanout, publishes; each is
delivered once per queue; handler, per drain), --rate x 10 (latency, reload, isolation: ten
seconds), 1000000 (backlog, recovery), 10000000 (flood: a cap, it stops when blocked).

flood against a local broker process, e.g. with a 256 MiB watermark:
  broker serve --memory-high-watermark 256MiB --http 127.0.0.1:15672 &
  broker bench flood --server ws://127.0.0.1:6789 --http http://127.0.0.1:15672 --durable

isolation with a hostile test plugin (tests/plugins, built for wasm32):
  (cd tests/plugins && cargo build --release --target wasm32-unknown-unknown)
  broker bench isolation --hostile memory \
    --plugin tests/plugins/target/wasm32-unknown-unknown/release/hostile_alloc.wasm
(loop: hostile_spin.wasm, memory: hostile_alloc.wasm, huge-output: hostile_huge_output.wasm,
panic: hostile_trap.wasm; they misbehave only on their trigger key, see --hostile-key).";

#[derive(Args)]
#[command(after_long_help = OUTPUT_HELP)]
pub struct BenchArgs {
    #[arg(value_enum)]
    scenario: Scenario,
    /// Start an in-process broker on a temporary data directory instead of using --server.
    #[arg(long)]
    embedded: bool,
    /// The broker's URL (`ws://`, or `wss://` with --ca for a broker with TLS)
    /// [default: the config file's `server`, else ws://127.0.0.1:6789].
    #[arg(long, env = "BROKER_URL")]
    server: Option<String>,
    #[command(flatten)]
    tls: super::admin::TlsArgs,
    /// Messages to publish in total [default: depends on the scenario, see below].
    #[arg(long)]
    msgs: Option<u64>,
    /// Body size in bytes (at least 20: the body starts with its timestamp).
    #[arg(long, default_value_t = 256)]
    size: usize,
    /// Publishing connections; they share --msgs (and, for latency, --rate).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    publishers: u64,
    /// Consumers (per queue for fanout); 0 measures confirmed publishing alone
    /// (persistent, transient, topic, fanout). Backlog and latency need one or more;
    /// recovery always uses one.
    #[arg(long, default_value_t = 1)]
    consumers: u64,
    /// Unconfirmed publishes in flight per publisher (latency publishes open-loop instead).
    #[arg(long, default_value_t = 2000)]
    window: usize,
    /// Consumer prefetch.
    #[arg(long, default_value_t = 2000)]
    prefetch: u32,
    /// topic: binding patterns on the topic exchange.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    bindings: u64,
    /// topic: distinct routing keys, cycled through; each matches at least one binding.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    keys: u64,
    /// fanout: queues bound to the fanout exchange [default: 4]. persistent, transient:
    /// independent queue pairs [default: 1]: publisher i publishes to queue i mod N,
    /// consumer j consumes from queue j mod N (--publishers and --consumers at least N).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    queues: Option<u64>,
    /// latency, reload, isolation: publishes per second (fixed schedule, all publishers
    /// together; for isolation, the victim's).
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..))]
    rate: u64,
    /// startup: deployed plugins (each with a durable exchange) to restore.
    #[arg(long, default_value_t = 8)]
    plugins: u64,
    /// Frame encoding of every client connection: json (the documented baseline) or
    /// binary (`broker-binary.v1` records for publish, ack, deliver and confirm).
    #[arg(long, value_enum, default_value_t = EncodingArg::Json)]
    encoding: EncodingArg,
    /// The clients' protocol: json (the WebSocket protocol, see --encoding), amqp
    /// (AMQP 0-9-1 through lapin to --amqp-url; persistent, transient, topic, fanout) or
    /// stomp (STOMP 1.2 over TCP to --stomp-addr; persistent, transient; the queue is
    /// declared through --server).
    #[arg(long, value_enum, default_value_t = ProtocolArg::Json)]
    protocol: ProtocolArg,
    /// With --protocol amqp: the broker's AMQP URL (any AMQP 0-9-1 broker, RabbitMQ too).
    #[arg(long, default_value = amqp::DEFAULT_AMQP_URL)]
    amqp_url: String,
    /// With --protocol stomp: the broker's STOMP listener (host:port).
    #[arg(long, default_value = stomp::DEFAULT_STOMP_ADDR)]
    stomp_addr: String,
    /// The broker's process id, for its CPU (every scenario) and RSS (flood) [default:
    /// the local process listening on --server's port; the own process with --embedded].
    #[arg(long)]
    broker_pid: Option<u32>,
    /// Against --server: run every client connection's tasks on one thread of their own
    /// (a current-thread runtime; open-loop publishers still pace on their own thread), so
    /// the bench's hand-offs are not wake-ups across threads.
    #[arg(long)]
    client_thread: bool,
    /// flood: a durable queue and persistent messages (default: transient).
    #[arg(long)]
    durable: bool,
    /// flood: the broker's management HTTP address (`http://host:port`), to read
    /// `broker_memory_high_watermark_bytes` from its /metrics.
    #[arg(long)]
    http: Option<String>,
    /// flood: the broker's memory high watermark when --http is not given (`512MiB`,
    /// bytes, or a share of RAM such as 0.4), for the report; with --embedded it is
    /// also the embedded broker's.
    #[arg(long)]
    watermark: Option<String>,
    /// isolation: what the hostile exchange's plugin does on its trigger key.
    #[arg(long, value_enum, default_value_t = Hostile::Memory)]
    hostile: Hostile,
    /// isolation: the hostile plugin's Wasm file (needed unless --hostile none).
    #[arg(long)]
    plugin: Option<std::path::PathBuf>,
    /// isolation: the routing key that triggers the hostile path [default: the test
    /// plugins' keys: spin, alloc, huge, boom].
    #[arg(long)]
    hostile_key: Option<String>,
    /// isolation: publishes per second to the hostile exchange.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    hostile_rate: u64,
    /// soak: how long to keep killing and restarting the broker (fractions allowed).
    #[arg(long, default_value_t = 1.0)]
    minutes: f64,
    /// soak: the seed of the kill moments [default: random].
    #[arg(long)]
    seed: Option<u64>,
}

/// isolation: the hostile plugin's misbehaviour.
#[derive(Clone, Copy, PartialEq, ValueEnum)]
pub(super) enum Hostile {
    /// Loops until its budget runs out (test plugin `spin`, key `spin`).
    Loop,
    /// Grows its memory in 1 MiB steps until it fails (`alloc`, key `alloc`).
    Memory,
    /// Returns a million binding ids (`huge-output`, key `huge`).
    HugeOutput,
    /// Panics (`trap`, key `boom`).
    Panic,
    /// No hostile exchange: the victim's baseline.
    None,
}

impl Hostile {
    fn name(self) -> &'static str {
        match self {
            Hostile::Loop => "loop",
            Hostile::Memory => "memory",
            Hostile::HugeOutput => "huge-output",
            Hostile::Panic => "panic",
            Hostile::None => "none",
        }
    }

    /// The routing key on which the test plugin misbehaves.
    fn trigger(self) -> &'static str {
        match self {
            Hostile::Loop => "spin",
            Hostile::Memory => "alloc",
            Hostile::HugeOutput => "huge",
            Hostile::Panic => "boom",
            Hostile::None => "",
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum EncodingArg {
    Json,
    Binary,
}

impl EncodingArg {
    fn encoding(self) -> Encoding {
        match self {
            EncodingArg::Json => Encoding::Json,
            EncodingArg::Binary => Encoding::Binary,
        }
    }
}

/// `--encoding` and the TLS options of this run, for every connection the scenarios open.
static OPTIONS: OnceLock<ConnectOptions> = OnceLock::new();

/// Connects a bench client with the run's `--encoding` and TLS options.
async fn connect(url: &str) -> Result<Client, ClientError> {
    let options = OPTIONS.get().cloned().unwrap_or_default();
    Client::connect_with(url, options).await
}

impl BenchArgs {
    /// `--msgs`, or the scenario's default.
    fn msgs(&self) -> u64 {
        self.msgs.unwrap_or(match self.scenario {
            Scenario::Persistent | Scenario::Transient | Scenario::Topic => 200_000,
            Scenario::Fanout => 100_000,
            Scenario::Latency | Scenario::Reload | Scenario::Isolation => {
                self.rate.saturating_mul(10)
            }
            Scenario::Backlog | Scenario::Recovery => 1_000_000,
            Scenario::Flood => 10_000_000,
            Scenario::Startup | Scenario::Soak => 0,
            Scenario::Handler => 100_000,
        })
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum Scenario {
    /// Durable queue, persistent messages, confirms, manual acks.
    Persistent,
    /// The same with transient messages on a transient queue.
    Transient,
    /// Persistent messages through the Wasm `topic` exchange: --bindings patterns on one
    /// durable queue, --keys distinct routing keys.
    Topic,
    /// Persistent messages through a `fanout` exchange to --queues durable queues,
    /// --consumers on each; rate = publishes/s, deliveries_rate = deliveries/s.
    Fanout,
    /// Persistent messages at a fixed --rate; latency from each message's scheduled send
    /// time (corrects for coordinated omission) to its delivery.
    Latency,
    /// Publishes --msgs persistent messages with no consumer, then drains them; prints the
    /// publish rate, drain_rate and the peak RSS (of the whole process with --embedded).
    Backlog,
    /// --embedded only: fills a durable queue, restarts the broker on the same data
    /// directory and measures from `Broker::start` to the first delivery.
    Recovery,
    /// `latency` through a Wasm exchange whose plugin is redeployed every second:
    /// deploy-to-active time and confirm p99 during reloads vs steady state.
    Reload,
    /// --embedded only: restarts with --plugins deployed plugins, with and without the
    /// compiled-artifact cache.
    Startup,
    /// Drains a backlog of persistent messages with a remote consumer, then again with a
    /// trivial in-broker Wasm handler (concurrency --consumers): rate = handler msgs/s,
    /// remote_rate, overhead = remote_rate / rate.
    Handler,
    /// A publisher without confirms at full speed into a queue with no consumer (--durable
    /// or transient) until the broker says `blocked` (or --msgs); then a consumer drains it.
    /// blocked, unblocked, lost (published - delivered), peak broker RSS (sampled every
    /// 10 ms) against the watermark.
    Flood,
    /// A victim `direct` exchange published to at --rate with confirms, next to a hostile
    /// exchange (--hostile, --plugin) published to --hostile-rate times a second with its
    /// trigger key: the victim's confirm p50/p99/p999 and how many hostile publishes failed.
    Isolation,
    /// The crash soak: runs `broker serve` itself, publishes with confirms and consumes
    /// with acks while SIGKILLing and restarting it for --minutes; prints published,
    /// confirmed, delivered, lost, duplicates, corrupted and fails unless lost and
    /// corrupted are 0 (its own output line; --server and the figures above do not apply).
    Soak,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::Persistent => "persistent",
            Scenario::Transient => "transient",
            Scenario::Topic => "topic",
            Scenario::Fanout => "fanout",
            Scenario::Latency => "latency",
            Scenario::Backlog => "backlog",
            Scenario::Recovery => "recovery",
            Scenario::Reload => "reload",
            Scenario::Startup => "startup",
            Scenario::Handler => "handler",
            Scenario::Flood => "flood",
            Scenario::Isolation => "isolation",
            Scenario::Soak => "soak",
        }
    }
}

pub async fn run(mut args: BenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.size >= STAMP_LEN,
        "--size must be at least {STAMP_LEN}"
    );
    if let Scenario::Soak = args.scenario {
        anyhow::ensure!(args.minutes > 0.0, "--minutes must be positive");
        let seed = args.seed.unwrap_or_else(|| fastrand::u64(..));
        return soak::run(Duration::from_secs_f64(args.minutes * 60.0), seed).await;
    }
    let encoding = args.encoding.encoding();
    let file = super::config_file::ConfigFile::load()?;
    args.server = Some(
        args.server
            .take()
            .or(file.server.clone())
            .unwrap_or_else(|| DEFAULT_SERVER.to_owned()),
    );
    let options = ConnectOptions {
        encoding,
        tls: args.tls.client_tls(&file)?,
        ..Default::default()
    };
    OPTIONS
        .set(options)
        .map_err(|_| anyhow::anyhow!("one bench run per process"))?;
    let report = match args.scenario {
        // Recovery starts (and restarts) its own broker.
        Scenario::Recovery | Scenario::Startup => {
            BROKER_PID.set(Some(std::process::id())).ok();
            mark_measured_start();
            let mut report = match args.scenario {
                Scenario::Recovery => backlog::recovery(&args).await?,
                _ => plugins::startup(&args).await?,
            };
            report.cpu = measured_cpu();
            report
        }
        _ => with_broker(&args).await?,
    };
    let encoding = match args.protocol {
        ProtocolArg::Json => encoding.name(),
        ProtocolArg::Amqp => "amqp",
        ProtocolArg::Stomp => "stomp",
    };
    println!("{report} encoding={encoding}");
    Ok(())
}

/// The broker's process id for /proc readings (`None`: not a readable local process).
static BROKER_PID: OnceLock<Option<u32>> = OnceLock::new();
/// The broker's thread CPU times at the start of the measured interval.
static CPU_FROM: Mutex<Option<procfs::ThreadTimes>> = Mutex::new(None);
/// The bench's own, against --server (`client_cpu_cores`).
static CLIENT_FROM: Mutex<Option<procfs::ThreadTimes>> = Mutex::new(None);

fn broker_pid() -> Option<u32> {
    BROKER_PID.get().copied().flatten()
}

/// The broker's CPU since [`mark_measured_start`].
fn measured_cpu() -> Option<procfs::CpuUsage> {
    CPU_FROM.lock().unwrap().take()?.usage_since()
}

/// Starts (or restarts) the interval the broker's CPU is reported over: a scenario calls
/// it once its setup is done, just before the clock starts.
fn mark_measured_start() {
    *CPU_FROM.lock().unwrap() = broker_pid().and_then(procfs::ThreadTimes::sample);
    *CLIENT_FROM.lock().unwrap() = procfs::ThreadTimes::sample(std::process::id());
}

impl BenchArgs {
    /// --server, else `BROKER_URL`, else the config file's, else the default (resolved
    /// in [`run`]).
    fn server(&self) -> &str {
        self.server.as_deref().unwrap_or(DEFAULT_SERVER)
    }
}

/// Runs a scenario against --server, or against an embedded broker it starts and stops.
async fn with_broker(args: &BenchArgs) -> anyhow::Result<Report> {
    let embedded = if args.embedded {
        let dir = tempfile::tempdir().context("creating a temporary data directory")?;
        let mut config = embedded_config(dir.path());
        config.amqp = Some("127.0.0.1:0".parse().expect("valid address"));
        config.stomp = Some("127.0.0.1:0".parse().expect("valid address"));
        if let Some(watermark) = &args.watermark {
            config.memory_high_watermark = broker::server::MemoryWatermark::parse(watermark)
                .map_err(|e| anyhow::anyhow!("--watermark {e}"))?;
        }
        let broker = Broker::start(config).await?;
        Some((broker, dir))
    } else {
        None
    };
    let stomp_addr = match &embedded {
        Some((b, _)) => b
            .stomp_addr()
            .expect("the embedded broker listens for STOMP")
            .to_string(),
        None => args.stomp_addr.clone(),
    };
    let url = match (&embedded, args.protocol) {
        (None, ProtocolArg::Json | ProtocolArg::Stomp) => args.server().to_owned(),
        (None, ProtocolArg::Amqp) => args.amqp_url.clone(),
        (Some((b, _)), ProtocolArg::Json | ProtocolArg::Stomp) => b.url(),
        (Some((b, _)), ProtocolArg::Amqp) => {
            let addr = b.amqp_addr().expect("the embedded broker listens for AMQP");
            format!("amqp://guest:guest@{addr}/%2f")
        }
    };
    let pid = match embedded {
        Some(_) => Some(std::process::id()),
        None => args.broker_pid.or_else(|| procfs::listener_pid(&url)),
    };
    BROKER_PID.set(pid).ok();
    // From here unless the scenario marks its own start after setup.
    mark_measured_start();
    let result = match embedded.is_none() && args.client_thread {
        // The clients' tasks on this thread alone: no wake-ups across threads.
        true => tokio::task::block_in_place(|| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(scenario(&url, &stomp_addr, args, false))
        }),
        false => scenario(&url, &stomp_addr, args, embedded.is_some()).await,
    };
    // Before an embedded broker stops: its threads are ours.
    let result = result.map(|mut report| {
        report.cpu = measured_cpu();
        if embedded.is_none() {
            let client = CLIENT_FROM.lock().unwrap().take();
            let cores = client.and_then(|from| from.usage_since());
            report = report.with(
                "client_cpu_cores",
                cores.map_or("-".into(), |c| format!("{:.2}", c.cores)),
            );
        }
        report
    });
    if let Some((broker, _dir)) = embedded {
        broker.shutdown().await;
    }
    result
}

async fn scenario(
    url: &str,
    stomp_addr: &str,
    args: &BenchArgs,
    embedded: bool,
) -> anyhow::Result<Report> {
    match args.protocol {
        ProtocolArg::Amqp => return amqp::run(url, args).await,
        ProtocolArg::Stomp => return stomp::run(url, stomp_addr, args).await,
        ProtocolArg::Json => {}
    }
    match args.scenario {
        Scenario::Persistent | Scenario::Transient | Scenario::Topic | Scenario::Fanout => {
            throughput::run(url, args).await
        }
        Scenario::Latency => latency::run(url, args).await,
        Scenario::Backlog => backlog::backlog(url, args, embedded).await,
        Scenario::Reload => plugins::reload(url, args).await,
        Scenario::Recovery | Scenario::Startup | Scenario::Soak => {
            unreachable!("these run their own broker")
        }
        Scenario::Handler => handler::run(url, args).await,
        Scenario::Flood => flood::run(url, args).await,
        Scenario::Isolation => isolation::run(url, args).await,
    }
}

fn embedded_config(dir: &std::path::Path) -> Config {
    let mut config = Config::new(dir);
    config.listen = "127.0.0.1:0".parse().expect("valid address");
    config
}

/// Queues and exchanges a scenario declared, to delete when it ends (failed or not).
#[derive(Default)]
struct Cleanup {
    exchanges: Vec<String>,
    queues: Vec<String>,
}

impl Cleanup {
    /// Deletes everything, then returns `result` (or the first deletion error).
    async fn finish<T>(self, admin: &Client, result: anyhow::Result<T>) -> anyhow::Result<T> {
        let mut cleaned = Ok(());
        for exchange in &self.exchanges {
            let deleted = admin.delete_exchange(exchange).await;
            cleaned = cleaned.and(deleted.with_context(|| format!("deleting `{exchange}`")));
        }
        for queue in &self.queues {
            let deleted = admin.delete_queue(queue).await.map(drop);
            cleaned = cleaned.and(deleted.with_context(|| format!("deleting `{queue}`")));
        }
        let value = result?;
        cleaned?;
        Ok(value)
    }
}

/// A name unique to this scenario run.
fn name(scenario: Scenario, suffix: &str) -> String {
    format!("bench-{}-{}{suffix}", scenario.name(), std::process::id())
}

/// Bytes of the decimal timestamp every body starts with.
const STAMP_LEN: usize = 20;

/// A `VmHWM` / `VmRSS`-style field of /proc/self/status, in MiB.
fn proc_status_mib(field: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kib: f64 = line[field.len()..]
        .trim_start_matches(':')
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

/// `proc_status_mib` formatted for a report; `-` when not measurable.
fn mib_field(measurable: bool, field: &str) -> String {
    match proc_status_mib(field) {
        Some(mib) if measurable => format!("{mib:.0}"),
        _ => "-".to_string(),
    }
}
