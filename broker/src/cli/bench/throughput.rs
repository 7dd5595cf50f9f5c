//! Throughput scenarios: `persistent` and `transient` (default exchange, one queue),
//! `topic` (Wasm topic exchange, many patterns) and `fanout` (one exchange, many queues).
//! Publishers and consumers run at full speed; rate is publishes per second end to end.
//! `persistent` and `transient` take `--queues N`: N independent pairs, publisher i
//! publishing to queue i mod N and consumer j consuming from queue j mod N.

use std::sync::Arc;
use std::time::Instant;

use broker::protocol::Binding;
use broker::{Client, QueueOptions};

use super::clients::{Consumer, Stream, client_share, spawn_drains, spawn_publishers};
use super::{BenchArgs, Cleanup, Report, Scenario, merged, name};

/// What a scenario declares and how it publishes.
pub(super) struct Topology {
    /// Exchange name and type; `None` publishes to the default exchange.
    pub(super) exchange: Option<(String, &'static str)>,
    pub(super) queues: Vec<String>,
    /// (queue, binding key) pairs on `exchange`.
    pub(super) bindings: Vec<(String, String)>,
    /// Routing keys publishers cycle through.
    pub(super) keys: Vec<String>,
    /// Durable queues and exchange, persistent messages.
    pub(super) durable: bool,
}

impl Topology {
    pub(super) fn of(args: &BenchArgs) -> Topology {
        let scenario = args.scenario;
        match scenario {
            Scenario::Persistent | Scenario::Transient => {
                let queues: Vec<String> = match args.queues.unwrap_or(1) {
                    1 => vec![name(scenario, "")],
                    n => (0..n).map(|q| name(scenario, &format!("-{q}"))).collect(),
                };
                Topology {
                    exchange: None,
                    bindings: Vec::new(),
                    keys: queues.clone(),
                    queues,
                    durable: matches!(scenario, Scenario::Persistent),
                }
            }
            Scenario::Topic => {
                let queue = name(scenario, "");
                Topology {
                    exchange: Some((name(scenario, "-x"), "topic")),
                    queues: vec![queue.clone()],
                    bindings: topic_patterns(args.bindings)
                        .into_iter()
                        .map(|pattern| (queue.clone(), pattern))
                        .collect(),
                    keys: topic_keys(args.bindings, args.keys),
                    durable: true,
                }
            }
            Scenario::Fanout => {
                let queues: Vec<String> = (0..args.queues.unwrap_or(4))
                    .map(|q| name(scenario, &format!("-{q}")))
                    .collect();
                Topology {
                    exchange: Some((name(scenario, "-x"), "fanout")),
                    bindings: queues.iter().map(|q| (q.clone(), String::new())).collect(),
                    queues,
                    keys: vec![String::new()],
                    durable: true,
                }
            }
            _ => unreachable!("not a throughput scenario"),
        }
    }

    pub(super) async fn declare(
        &self,
        admin: &Client,
        cleanup: &mut Cleanup,
    ) -> anyhow::Result<()> {
        let options = QueueOptions {
            durable: self.durable,
            ..Default::default()
        };
        for queue in &self.queues {
            admin.declare_queue(queue, options.clone()).await?;
            cleanup.queues.push(queue.clone());
        }
        if let Some((exchange, kind)) = &self.exchange {
            admin
                .declare_exchange(exchange, kind, self.durable, Default::default())
                .await?;
            cleanup.exchanges.push(exchange.clone());
            for (queue, key) in &self.bindings {
                admin
                    .bind(Binding {
                        exchange: exchange.clone(),
                        queue: queue.clone(),
                        key: key.clone(),
                        arguments: Default::default(),
                    })
                    .await?;
            }
        }
        Ok(())
    }
}

/// `bindings` patterns of four shapes; `topic_keys` makes keys that match them.
fn topic_patterns(bindings: u64) -> Vec<String> {
    (0..bindings)
        .map(|i| match i % 4 {
            0 => format!("region.r{i}.*"),
            1 => format!("*.r{i}.#"),
            2 => format!("#.t{i}"),
            _ => format!("s{i}.#"),
        })
        .collect()
}

/// `keys` distinct routing keys of 2–4 words; key `j` matches pattern `j % bindings`
/// (and no other), so every message is routed to the queue exactly once.
fn topic_keys(bindings: u64, keys: u64) -> Vec<String> {
    (0..keys)
        .map(|j| {
            let i = j % bindings;
            match i % 4 {
                0 => format!("region.r{i}.e{j}"),
                1 => format!("order.r{i}.e{j}.eu"),
                2 => format!("audit.e{j}.t{i}"),
                _ => format!("s{i}.e{j}"),
            }
        })
        .collect()
}

pub(super) async fn run(url: &str, args: &BenchArgs) -> anyhow::Result<Report> {
    let admin = super::connect(url).await?;
    let mut cleanup = Cleanup::default();
    let result = measure(url, args, &admin, &mut cleanup).await;
    cleanup.finish(&admin, result).await
}

async fn measure(
    url: &str,
    args: &BenchArgs,
    admin: &Client,
    cleanup: &mut Cleanup,
) -> anyhow::Result<Report> {
    let msgs = args.msgs();
    let topology = Topology::of(args);
    topology.declare(admin, cleanup).await?;
    let stream = Stream {
        exchange: topology
            .exchange
            .as_ref()
            .map_or(String::new(), |(x, _)| x.clone()),
        keys: Arc::from(topology.keys.clone()),
        persistent: topology.durable,
        size: args.size,
    };
    let pairs = matches!(args.scenario, Scenario::Persistent | Scenario::Transient)
        && topology.queues.len() > 1;
    // Subscribed before the clock starts; with --consumers 0 the run measures confirmed
    // publishing alone. Every queue receives every message it is bound for: all of them.
    let (streams, consumers) = match pairs {
        false => {
            let consumers =
                Consumer::subscribe_all(url, &topology.queues, args.consumers, args.prefetch, msgs)
                    .await?;
            (vec![stream], consumers)
        }
        true => independent_pairs(url, args, &topology.queues, &stream, msgs).await?,
    };

    super::mark_measured_start();
    let start = Instant::now();
    let drains = spawn_drains(consumers, start);
    let publishers = spawn_publishers(url, &streams, msgs, args.publishers, args.window, start);
    let confirm_us = merged(publishers).await?;
    let latency_us = merged(drains).await?;
    let secs = start.elapsed().as_secs_f64();

    let mut report = Report::new(args.scenario, msgs, secs);
    report.confirm_us = confirm_us;
    report.latency_us = latency_us;
    Ok(scenario_fields(
        report,
        args,
        &topology.queues,
        pairs,
        msgs,
        secs,
    ))
}

/// A throughput line's scenario-specific fields (JSON and AMQP benches alike).
pub(super) fn scenario_fields(
    report: Report,
    args: &BenchArgs,
    queues: &[String],
    pairs: bool,
    msgs: u64,
    secs: f64,
) -> Report {
    match args.scenario {
        Scenario::Topic => report
            .with("bindings", args.bindings)
            .with("keys", args.keys),
        Scenario::Persistent | Scenario::Transient if pairs => report.with("queues", queues.len()),
        Scenario::Fanout => {
            let deliveries = match args.consumers {
                0 => "-".to_string(),
                _ => format!("{:.0}", (msgs * queues.len() as u64) as f64 / secs),
            };
            report
                .with("queues", queues.len())
                .with("deliveries_rate", deliveries)
        }
        _ => report,
    }
}

/// `--queues N` for persistent and transient: stream i publishes only to queue i, and each
/// queue's consumers (consumer j on queue j mod N) share what its publishers send (publisher
/// i sends to queue i mod N, its share of --msgs as `spawn_publishers` splits them).
async fn independent_pairs(
    url: &str,
    args: &BenchArgs,
    queues: &[String],
    stream: &Stream,
    msgs: u64,
) -> anyhow::Result<(Vec<Stream>, Vec<(Consumer, u64)>)> {
    let n = queues.len() as u64;
    anyhow::ensure!(
        args.publishers >= n && (args.consumers == 0 || args.consumers >= n),
        "--queues {n} needs at least {n} publishers and 0 or at least {n} consumers"
    );
    let streams = queues
        .iter()
        .map(|queue| Stream {
            keys: Arc::from(vec![queue.clone()]),
            ..stream.clone()
        })
        .collect();
    let mut per_queue = vec![0u64; queues.len()];
    for i in 0..args.publishers {
        per_queue[(i % n) as usize] += client_share(msgs, args.publishers, i);
    }
    let mut consumers = Vec::new();
    for (q, queue) in queues.iter().enumerate() {
        let on_queue = (0..args.consumers).filter(|j| j % n == q as u64).count() as u64;
        for k in 0..on_queue {
            let share = per_queue[q] / on_queue + u64::from(k < per_queue[q] % on_queue);
            consumers.push((Consumer::subscribe(url, queue, args.prefetch).await?, share));
        }
    }
    Ok((streams, consumers))
}
