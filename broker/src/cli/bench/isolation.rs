//! `isolation`: does a hostile exchange plugin slow anyone else down? A victim `direct`
//! exchange gets persistent messages at --rate with confirms (open loop, as `latency`:
//! confirm latency from each message's scheduled time), consumed from its durable queue,
//! while a second exchange whose plugin misbehaves (--hostile, the Wasm file --plugin) is
//! published to --hostile-rate times a second with the key that triggers it. Reports the
//! victim's confirm p50/p99/p999 and how the hostile publishes fared.
//!
//! The hostile plugins are the test plugins in `tests/plugins`; each misbehaves only on
//! its trigger key (--hostile-key), so deploy-time validation that exercises a plugin on
//! ordinary keys accepts them. `--hostile none` measures the victim alone: the baseline.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use broker::protocol::Binding;
use broker::{Client, Headers, Message, QueueOptions};
use futures_util::StreamExt as _;
use futures_util::stream::FuturesUnordered;
use tokio::sync::mpsc;

use super::clients::{Consumer, Stream, spawn_drains};
use super::latency::{LEAD_IN, collect_histogram, pace};
use super::{BenchArgs, Cleanup, Hostile, Report, merged, name};

/// Binding key of the hostile exchange's queue (its plugins route well-behaved keys as
/// `direct` does).
const GOOD_KEY: &str = "ok";

pub(super) async fn run(url: &str, args: &BenchArgs) -> anyhow::Result<Report> {
    anyhow::ensure!(args.consumers > 0, "isolation needs at least one consumer");
    let admin = super::connect(url).await?;
    let mut cleanup = Cleanup::default();
    let result = measure(url, args, &admin, &mut cleanup).await;
    cleanup.finish(&admin, result).await
}

/// Declares `exchange` of `kind` with a durable queue bound by `key`.
async fn declare(
    admin: &Client,
    cleanup: &mut Cleanup,
    exchange: &str,
    kind: &str,
    queue: &str,
    key: &str,
) -> anyhow::Result<()> {
    admin.declare_queue(queue, QueueOptions::durable()).await?;
    cleanup.queues.push(queue.to_owned());
    admin
        .declare_exchange(exchange, kind, false, Headers::new())
        .await?;
    cleanup.exchanges.push(exchange.to_owned());
    admin
        .bind(Binding {
            exchange: exchange.to_owned(),
            queue: queue.to_owned(),
            key: key.to_owned(),
            arguments: Headers::new(),
        })
        .await?;
    Ok(())
}

/// Deploys the hostile plugin and declares its exchange; returns the exchange's name.
async fn hostile_exchange(
    args: &BenchArgs,
    admin: &Client,
    cleanup: &mut Cleanup,
) -> anyhow::Result<Option<String>> {
    if args.hostile == Hostile::None {
        return Ok(None);
    }
    let path = args.plugin.as_ref().context(
        "--hostile needs --plugin FILE.wasm: a test plugin from tests/plugins, built with \
         `cargo build --release --target wasm32-unknown-unknown` in that directory",
    )?;
    let wasm = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let plugin = name(args.scenario, "-hostile");
    admin.deploy_plugin(&plugin, &wasm).await.with_context(|| {
        format!(
            "deploying {} as `{plugin}` (if deploy-time validation refused it, use a \
                 variant that misbehaves only on its trigger key, as the test plugins \
                 spin, alloc, huge-output and trap do, with --hostile-key)",
            path.display()
        )
    })?;
    let exchange = name(args.scenario, "-hostile-x");
    let queue = name(args.scenario, "-hostile-q");
    declare(admin, cleanup, &exchange, &plugin, &queue, GOOD_KEY).await?;
    Ok(Some(exchange))
}

async fn measure(
    url: &str,
    args: &BenchArgs,
    admin: &Client,
    cleanup: &mut Cleanup,
) -> anyhow::Result<Report> {
    let msgs = args.msgs();
    let (exchange, queue) = (name(args.scenario, "-x"), name(args.scenario, "-q"));
    declare(admin, cleanup, &exchange, "direct", &queue, "victim").await?;
    let hostile = hostile_exchange(args, admin, cleanup).await?;
    let stream = Stream {
        exchange,
        keys: Arc::from(vec!["victim".to_owned()]),
        persistent: true,
        size: args.size,
    };
    let consumers =
        Consumer::subscribe_all(url, &[queue], args.consumers, args.prefetch, msgs).await?;
    let client = Arc::new(super::connect(url).await?);
    client.confirm_select().await?;
    let attacker = Arc::new(super::connect(url).await?);
    attacker.confirm_select().await?;

    super::mark_measured_start();
    let start = Instant::now() + LEAD_IN;
    let drains = spawn_drains(consumers, start);
    let (confirms_tx, confirms_rx) = mpsc::unbounded_channel();
    let collector = tokio::spawn(collect_histogram(client.clone(), confirms_rx));
    let rate = args.rate;
    let pacer = tokio::task::spawn_blocking(move || {
        pace(&client, &stream, 0..msgs, rate, start, &confirms_tx)
    });
    let counts = Arc::new(HostileCounts::default());
    let (stop, stopped) = tokio::sync::oneshot::channel();
    let attack = hostile.map(|exchange| {
        let key = args
            .hostile_key
            .clone()
            .unwrap_or_else(|| args.hostile.trigger().to_owned());
        tokio::spawn(attack(
            attacker.clone(),
            exchange,
            key,
            args.hostile_rate,
            counts.clone(),
            stopped,
        ))
    });
    let max_lag = pacer.await?;
    let _ = stop.send(());
    if let Some(attack) = attack {
        attack.await?;
    }
    let confirm_us = collector.await??;
    let latency_us = merged(drains).await?;
    let secs = start.elapsed().as_secs_f64();

    let quantile = |q: f64| match confirm_us.is_empty() {
        true => "-".to_string(),
        false => confirm_us.value_at_quantile(q).to_string(),
    };
    let (p50, p99, p999) = (quantile(0.5), quantile(0.99), quantile(0.999));
    let mut report = Report::new(args.scenario, msgs, secs);
    report.latency_us = latency_us;
    report.confirm_us = confirm_us;
    Ok(report
        .with("hostile", args.hostile.name())
        .with("target_rate", rate)
        .with("confirm_p50_us", p50)
        .with("confirm_p99_us", p99)
        .with("confirm_p999_us", p999)
        .with("max_send_lag_us", max_lag.as_micros())
        .with("hostile_sent", counts.sent.load(Relaxed))
        .with("hostile_failed", counts.failed.load(Relaxed))
        .with("hostile_confirmed", counts.confirmed.load(Relaxed)))
}

#[derive(Default)]
struct HostileCounts {
    sent: AtomicU64,
    /// Answered with an error (the plugin failed, or its exchange is quarantined).
    failed: AtomicU64,
    confirmed: AtomicU64,
}

/// Publishes to the hostile exchange with `key` at `rate` per second until `stop`, then
/// waits (at most 30 s) for the answers still due.
async fn attack(
    client: Arc<Client>,
    exchange: String,
    key: String,
    rate: u64,
    counts: Arc<HostileCounts>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let mut ticks = tokio::time::interval(Duration::from_nanos(1_000_000_000 / rate));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut answers = FuturesUnordered::new();
    let counted = |answer: Result<(), broker::ClientError>| {
        let counter = match answer {
            Ok(()) => &counts.confirmed,
            Err(_) => &counts.failed,
        };
        counter.fetch_add(1, Relaxed);
    };
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = ticks.tick() => {
                let mut message = Message::text(&key, "hostile");
                message.exchange = exchange.clone();
                message.properties.persistent = true;
                answers.push(client.publish(message, false));
                counts.sent.fetch_add(1, Relaxed);
            }
            Some(answer) = answers.next(), if !answers.is_empty() => counted(answer),
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(answer) = answers.next().await {
            counted(answer);
        }
    })
    .await;
}
