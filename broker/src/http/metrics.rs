//! `GET /metrics`: everything the broker counts, in Prometheus text format. Every family
//! is listed in docs/http.md.

use crate::metrics::{Exposition, HistogramSnapshot};
use crate::plugin::{CALL_TIME_BUCKETS, StatsSnapshot, call_time_bucket_bound};
use crate::protocol::{ExchangeInfo, QueueInfo};
use crate::store::WriterSnapshot;

/// What one scrape reads.
pub struct Scrape {
    pub queues: Vec<QueueInfo>,
    pub exchanges: Vec<ExchangeInfo>,
    pub connections: usize,
    /// (plugin, version, counters); version 0 is a bundled plugin.
    pub plugins: Vec<(String, u64, StatsSnapshot)>,
    pub store: WriterSnapshot,
    pub resident_bytes: Option<u64>,
    pub memory_high_watermark_bytes: u64,
    pub memory_alarm: bool,
    pub auth_failures: u64,
    pub uptime_seconds: f64,
}

type QueueField = fn(&QueueInfo) -> u64;
type PluginField = fn(&StatsSnapshot) -> u64;

const QUEUE_GAUGES: &[(&str, &str, QueueField)] = &[
    (
        "broker_queue_messages_ready",
        "Messages ready for delivery.",
        |q| q.ready,
    ),
    (
        "broker_queue_messages_unacked",
        "Messages delivered and not yet acked.",
        |q| q.unacked,
    ),
    (
        "broker_queue_messages_delayed",
        "Messages waiting for a delay or retry backoff.",
        |q| q.delayed,
    ),
    (
        "broker_queue_messages_paged_out",
        "Ready messages whose body is only on disk (past max_in_memory_length).",
        |q| q.paged_out,
    ),
    (
        "broker_queue_consumers",
        "Consumers subscribed to the queue.",
        |q| q.consumers,
    ),
];

const QUEUE_COUNTERS: &[(&str, &str, QueueField)] = &[
    (
        "broker_queue_published_total",
        "Messages accepted into the queue.",
        |q| q.published,
    ),
    (
        "broker_queue_delivered_total",
        "Deliveries to consumers, redeliveries included.",
        |q| q.delivered,
    ),
    ("broker_queue_acked_total", "Messages acked.", |q| q.acked),
    (
        "broker_queue_redelivered_total",
        "Deliveries of messages delivered before.",
        |q| q.redelivered,
    ),
    (
        "broker_queue_dead_lettered_total",
        "Messages dead-lettered from the queue.",
        |q| q.dead_lettered,
    ),
    (
        "broker_queue_dropped_total",
        "Dead letters dropped (no target, or dead_letter: false).",
        |q| q.dropped,
    ),
    (
        "broker_queue_expired_total",
        "Messages that expired in the queue.",
        |q| q.expired,
    ),
    (
        "broker_queue_deduplicated_total",
        "Publishes confirmed but not enqueued: their message id was in the dedup window.",
        |q| q.deduplicated,
    ),
];

const PLUGIN_COUNTERS: &[(&str, &str, PluginField)] = &[
    (
        "broker_plugin_messages_total",
        "Messages routed by the plugin version (key cache hits included).",
        |p| p.messages,
    ),
    ("broker_plugin_calls_total", "Calls into the plugin.", |p| {
        p.calls
    }),
    (
        "broker_plugin_errors_total",
        "Failed calls of any kind.",
        |p| p.errors,
    ),
    ("broker_plugin_traps_total", "Calls that trapped.", |p| {
        p.traps
    }),
    (
        "broker_plugin_timeouts_total",
        "Calls stopped for fuel or the wall-clock deadline.",
        |p| p.timeouts,
    ),
    (
        "broker_plugin_memory_exhausted_total",
        "Calls stopped at the memory limit.",
        |p| p.memory_exhausted,
    ),
    (
        "broker_plugin_invalid_output_total",
        "Calls whose result broke the contract.",
        |p| p.invalid_output,
    ),
    (
        "broker_plugin_instantiations_total",
        "Instances created.",
        |p| p.instantiations,
    ),
    (
        "broker_plugin_quarantines_total",
        "Times an exchange of this type was quarantined.",
        |p| p.quarantines,
    ),
    (
        "broker_plugin_cache_hits_total",
        "Messages routed from the host key cache without a call.",
        |p| p.cache_hits,
    ),
];

pub fn render(s: &Scrape) -> String {
    let mut e = Exposition::default();
    for (name, help, field) in QUEUE_GAUGES {
        e.family(name, "gauge", help);
        for q in &s.queues {
            e.sample(name, &[("queue", &q.queue)], field(q) as f64);
        }
    }
    for (name, help, field) in QUEUE_COUNTERS {
        e.family(name, "counter", help);
        for q in &s.queues {
            e.sample(name, &[("queue", &q.queue)], field(q) as f64);
        }
    }

    type ExchangeField = fn(&ExchangeInfo) -> u64;
    let exchange_families: [(&str, &str, &str, ExchangeField); 5] = [
        (
            "broker_exchange_routed_total",
            "counter",
            "Publishes routed to at least one queue.",
            |x| x.routed,
        ),
        (
            "broker_exchange_unroutable_total",
            "counter",
            "Publishes that reached no queue.",
            |x| x.unroutable,
        ),
        (
            "broker_exchange_failed_total",
            "counter",
            "Publishes the exchange failed to route (plugin error, quarantine).",
            |x| x.failed,
        ),
        (
            "broker_exchange_bindings",
            "gauge",
            "Bindings of the exchange.",
            |x| x.bindings,
        ),
        (
            "broker_exchange_quarantined",
            "gauge",
            "1 while the exchange is quarantined (its plugin kept failing), else 0.",
            |x| u64::from(x.quarantined),
        ),
    ];
    for (name, kind, help, field) in exchange_families {
        e.family(name, kind, help);
        for x in &s.exchanges {
            let labels = [("exchange", x.exchange.as_str()), ("type", x.kind.as_str())];
            e.sample(name, &labels, field(x) as f64);
        }
    }

    let versions: Vec<String> = s.plugins.iter().map(|(_, v, _)| v.to_string()).collect();
    let plugin_labels = |i: usize| {
        [
            ("plugin", s.plugins[i].0.as_str()),
            ("version", versions[i].as_str()),
        ]
    };
    for (name, help, field) in PLUGIN_COUNTERS {
        e.family(name, "counter", help);
        for (i, (_, _, stats)) in s.plugins.iter().enumerate() {
            e.sample(name, &plugin_labels(i), field(stats) as f64);
        }
    }
    let name = "broker_plugin_call_duration_seconds";
    e.family(name, "histogram", "Duration of calls into the plugin.");
    for (i, (_, _, stats)) in s.plugins.iter().enumerate() {
        e.histogram(name, &plugin_labels(i), &call_histogram(stats));
    }

    let store = &s.store;
    e.family(
        "broker_store_commits_total",
        "counter",
        "Store transactions committed (group commits).",
    );
    e.sample("broker_store_commits_total", &[], store.commits as f64);
    e.family(
        "broker_store_commit_errors_total",
        "counter",
        "Store commits that failed.",
    );
    e.sample(
        "broker_store_commit_errors_total",
        &[],
        store.commit_errors as f64,
    );
    e.family(
        "broker_store_commit_batch_ops",
        "histogram",
        "Store operations per transaction.",
    );
    e.histogram("broker_store_commit_batch_ops", &[], &store.batch_ops);
    e.family(
        "broker_store_commit_seconds",
        "histogram",
        "Time to write and commit one transaction, fsync included.",
    );
    e.histogram("broker_store_commit_seconds", &[], &store.commit_seconds);

    e.family("broker_connections", "gauge", "Open client connections.");
    e.sample("broker_connections", &[], s.connections as f64);
    if let Some(bytes) = s.resident_bytes {
        e.family(
            "broker_resident_memory_bytes",
            "gauge",
            "Resident set size of the broker process.",
        );
        e.sample("broker_resident_memory_bytes", &[], bytes as f64);
    }
    e.family(
        "broker_memory_high_watermark_bytes",
        "gauge",
        "Resident memory past which publishers are blocked (memory alarm).",
    );
    e.sample(
        "broker_memory_high_watermark_bytes",
        &[],
        s.memory_high_watermark_bytes as f64,
    );
    e.family(
        "broker_memory_alarm",
        "gauge",
        "1 while the memory alarm blocks publishing connections.",
    );
    e.sample("broker_memory_alarm", &[], s.memory_alarm as u8 as f64);
    e.family(
        "broker_auth_failures_total",
        "counter",
        "Failed logins on every listener.",
    );
    e.sample("broker_auth_failures_total", &[], s.auth_failures as f64);
    e.family(
        "broker_uptime_seconds",
        "gauge",
        "Seconds since the broker started.",
    );
    e.sample("broker_uptime_seconds", &[], s.uptime_seconds);
    e.finish()
}

/// Bounds of the plugin stats' power-of-two call-time buckets, in seconds.
static CALL_BOUNDS: std::sync::LazyLock<Vec<f64>> = std::sync::LazyLock::new(|| {
    (0..CALL_TIME_BUCKETS)
        .filter_map(call_time_bucket_bound)
        .map(|bound| bound.as_secs_f64())
        .collect()
});

/// A plugin version's call times as a Prometheus histogram.
fn call_histogram(stats: &StatsSnapshot) -> HistogramSnapshot {
    let mut total = 0;
    let cumulative = stats
        .call_buckets
        .iter()
        .map(|count| {
            total += count;
            total
        })
        .collect();
    HistogramSnapshot {
        bounds: CALL_BOUNDS.as_slice(),
        cumulative,
        sum: stats.call_time.as_secs_f64(),
    }
}
