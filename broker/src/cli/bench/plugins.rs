//! Plugin lifecycle scenarios.
//!
//! `reload`: persistent messages at a fixed --rate through a Wasm exchange whose plugin is
//! redeployed every second (each time new bytes, so each deploy compiles). Confirm
//! latencies (from each message's scheduled send time, as in `latency`) are split into
//! messages due while a deploy was in progress (from the request to 100 ms after the
//! reply) and the rest, so the pause a reload causes shows against the steady state.
//!
//! `startup`: --plugins deployed plugins, each with a durable exchange; the broker is
//! restarted three times with its compiled-artifact cache and three times without, and
//! the fastest start of each kind is reported.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use broker::plugin::STANDARD_EXCHANGES;
use broker::protocol::Binding;
use broker::{Broker, Client, Headers, QueueOptions};
use tokio::sync::mpsc;

use super::clients::{Consumer, Stream, spawn_drains};
use super::latency::{LEAD_IN, collect, pace};
use super::{BenchArgs, Cleanup, Report, Scenario, embedded_config, merged, name, new_histogram};

/// How long after a deploy's reply messages still count as "during the reload".
const SETTLE: Duration = Duration::from_millis(100);
const RELOAD_EVERY: Duration = Duration::from_secs(1);

/// The bundled `topic` plugin with a custom section making its bytes (and hash) unique to
/// `variant`: a distinct plugin version that routes the same way.
fn topic_variant(variant: u64) -> Vec<u8> {
    let topic = STANDARD_EXCHANGES
        .iter()
        .find(|(name, _)| *name == "topic")
        .expect("topic is bundled")
        .1;
    let name = b"bench-variant";
    let mut section = vec![name.len() as u8];
    section.extend_from_slice(name);
    section.extend_from_slice(&variant.to_le_bytes());
    let mut wasm = topic.to_vec();
    wasm.push(0); // custom section id
    wasm.push(section.len() as u8); // LEB128 of a length below 128
    wasm.extend_from_slice(&section);
    wasm
}

pub(super) async fn reload(url: &str, args: &BenchArgs) -> anyhow::Result<Report> {
    anyhow::ensure!(args.consumers > 0, "reload needs at least one consumer");
    let admin = super::connect(url).await?;
    let mut cleanup = Cleanup::default();
    let result = measure_reload(url, args, &admin, &mut cleanup).await;
    cleanup.finish(&admin, result).await
}

async fn measure_reload(
    url: &str,
    args: &BenchArgs,
    admin: &Client,
    cleanup: &mut Cleanup,
) -> anyhow::Result<Report> {
    let msgs = args.msgs();
    let plugin = name(args.scenario, "");
    let (exchange, queue) = (plugin.clone(), name(args.scenario, "-q"));
    admin.deploy_plugin(&plugin, &topic_variant(0)).await?;
    admin
        .declare_exchange(&exchange, &plugin, false, Headers::new())
        .await?;
    cleanup.exchanges.push(exchange.clone());
    admin.declare_queue(&queue, QueueOptions::durable()).await?;
    cleanup.queues.push(queue.clone());
    admin
        .bind(Binding {
            exchange: exchange.clone(),
            queue: queue.clone(),
            key: "orders.#".into(),
            arguments: Headers::new(),
        })
        .await?;
    let stream = Stream {
        exchange,
        keys: Arc::from(vec![
            "orders.eu.paid".to_owned(),
            "orders.us.new".to_owned(),
        ]),
        persistent: true,
        size: args.size,
    };
    let consumers =
        Consumer::subscribe_all(url, &[queue], args.consumers, args.prefetch, msgs).await?;
    let client = Arc::new(super::connect(url).await?);
    client.confirm_select().await?;

    super::mark_measured_start();
    let start = Instant::now() + LEAD_IN;
    let drains = spawn_drains(consumers, start);
    let (confirms_tx, confirms_rx) = mpsc::unbounded_channel();
    let collector = tokio::spawn(collect(client.clone(), confirms_rx));
    let rate = args.rate;
    let pacer = tokio::task::spawn_blocking(move || {
        pace(&client, &stream, 0..msgs, rate, start, &confirms_tx)
    });
    let publishing = Duration::from_nanos((msgs as u128 * 1_000_000_000 / rate as u128) as u64);
    let mut windows = Vec::new();
    let mut variant = 1;
    while start.elapsed() + RELOAD_EVERY < publishing {
        tokio::time::sleep(RELOAD_EVERY).await;
        let wasm = topic_variant(variant);
        let sent = Instant::now();
        admin.deploy_plugin(&plugin, &wasm).await?;
        windows.push((sent, sent.elapsed()));
        variant += 1;
    }
    pacer.await?;
    let confirms = collector.await??;
    let latency_us = merged(drains).await?;
    let secs = start.elapsed().as_secs_f64();

    let (mut steady, mut reloading) = (new_histogram(), new_histogram());
    for (due, latency) in confirms {
        let during = windows
            .iter()
            .any(|(sent, took)| due >= *sent && due <= *sent + *took + SETTLE);
        let histogram = if during { &mut reloading } else { &mut steady };
        histogram.saturating_record(latency.as_micros() as u64);
    }
    let deploy_ms: Vec<f64> = windows
        .iter()
        .map(|(_, took)| took.as_secs_f64() * 1e3)
        .collect();
    let mean_ms = deploy_ms.iter().sum::<f64>() / deploy_ms.len().max(1) as f64;
    let max_ms = deploy_ms.iter().copied().fold(0.0, f64::max);
    let quantile = |h: &hdrhistogram::Histogram<u64>, q: f64| match h.is_empty() {
        true => "-".to_string(),
        false => h.value_at_quantile(q).to_string(),
    };

    let mut report = Report::new(args.scenario, msgs, secs);
    report.latency_us = latency_us;
    report.confirm_us = steady.clone();
    report.confirm_us.add(&reloading)?;
    Ok(report
        .with("target_rate", rate)
        .with("deploys", windows.len())
        .with("deploy_to_active_ms_mean", format!("{mean_ms:.1}"))
        .with("deploy_to_active_ms_max", format!("{max_ms:.1}"))
        .with("steady_confirm_p99_us", quantile(&steady, 0.99))
        .with("reload_confirm_p99_us", quantile(&reloading, 0.99))
        .with("reload_confirm_max_us", quantile(&reloading, 1.0))
        .with("reload_msgs", reloading.len()))
}

pub(super) async fn startup(args: &BenchArgs) -> anyhow::Result<Report> {
    anyhow::ensure!(
        args.embedded,
        "startup needs --embedded: it restarts the broker"
    );
    let dir = tempfile::tempdir().context("creating a temporary data directory")?;
    let mut config = embedded_config(dir.path());
    let broker = Broker::start(config.clone()).await?;
    let admin = super::connect(&broker.url()).await?;
    for i in 0..args.plugins {
        let plugin = format!("startup-{i}");
        admin.deploy_plugin(&plugin, &topic_variant(i)).await?;
        admin
            .declare_exchange(&plugin, &plugin, true, Headers::new())
            .await?;
    }
    admin.close().await;
    broker.shutdown().await;

    let mut fastest = [Duration::MAX; 2];
    for (i, cached) in [true, false].into_iter().enumerate() {
        config.artifact_cache = cached;
        for _ in 0..3 {
            let starting = Instant::now();
            let broker = Broker::start(config.clone()).await?;
            fastest[i] = fastest[i].min(starting.elapsed());
            broker.shutdown().await;
        }
    }
    let secs = fastest.iter().map(Duration::as_secs_f64).sum();
    let ms = |d: Duration| format!("{:.0}", d.as_secs_f64() * 1e3);
    Ok(Report::new(Scenario::Startup, 0, secs)
        .with("plugins", args.plugins)
        .with("cached_start_ms", ms(fastest[0]))
        .with("cold_start_ms", ms(fastest[1])))
}
