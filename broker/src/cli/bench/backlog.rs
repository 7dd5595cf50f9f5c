//! Large-queue scenarios: `backlog` (publish everything with no consumer, then drain)
//! and `recovery` (fill a queue, restart the embedded broker, time the first delivery).

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use broker::{Broker, Client, QueueOptions};

use super::clients::{Consumer, Stream, spawn_drains, spawn_publishers};
use super::{BenchArgs, Cleanup, Report, Scenario, embedded_config, merged, mib_field, name};

/// Persistent messages to one durable queue, routed by the default exchange.
fn stream(queue: &str, args: &BenchArgs) -> Stream {
    Stream {
        exchange: String::new(),
        keys: Arc::from(vec![queue.to_owned()]),
        persistent: true,
        size: args.size,
    }
}

/// Publishes `msgs` confirmed messages to `queue` and checks they are all ready there.
/// Returns the confirm latencies.
async fn fill(
    url: &str,
    admin: &Client,
    queue: &str,
    args: &BenchArgs,
    start: Instant,
) -> anyhow::Result<hdrhistogram::Histogram<u64>> {
    let msgs = args.msgs();
    let publishers = spawn_publishers(
        url,
        &[stream(queue, args)],
        msgs,
        args.publishers,
        args.window,
        start,
    );
    let confirm_us = merged(publishers).await?;
    let ready = admin.queue_info(queue).await?.ready;
    anyhow::ensure!(
        ready == msgs,
        "`{queue}` holds {ready} ready messages after {msgs} confirmed publishes"
    );
    Ok(confirm_us)
}

/// `backlog`: rate is the publish rate (no consumer); `drain_rate` the rate at which
/// --consumers then empty the queue. Latencies are end to end, time in the backlog
/// included. `peak_rss_mib` (VmHWM) and `full_rss_mib` (VmRSS with the queue full) are
/// the process's: the broker's plus the bench client's, and `-` against --server.
pub(super) async fn backlog(url: &str, args: &BenchArgs, embedded: bool) -> anyhow::Result<Report> {
    anyhow::ensure!(args.consumers > 0, "backlog needs at least one consumer");
    let admin = super::connect(url).await?;
    let mut cleanup = Cleanup::default();
    let result = measure_backlog(url, args, embedded, &admin, &mut cleanup).await;
    cleanup.finish(&admin, result).await
}

async fn measure_backlog(
    url: &str,
    args: &BenchArgs,
    embedded: bool,
    admin: &Client,
    cleanup: &mut Cleanup,
) -> anyhow::Result<Report> {
    let msgs = args.msgs();
    let queue = name(args.scenario, "");
    admin.declare_queue(&queue, QueueOptions::durable()).await?;
    cleanup.queues.push(queue.clone());

    super::mark_measured_start();
    let start = Instant::now();
    let confirm_us = fill(url, admin, &queue, args, start).await?;
    let publish_secs = start.elapsed().as_secs_f64();
    let full_rss = mib_field(embedded, "VmRSS");

    let drain_start = Instant::now();
    let consumers = Consumer::subscribe_all(
        url,
        std::slice::from_ref(&queue),
        args.consumers,
        args.prefetch,
        msgs,
    )
    .await?;
    let latency_us = merged(spawn_drains(consumers, start)).await?;
    let drain_secs = drain_start.elapsed().as_secs_f64();

    let mut report = Report::new(args.scenario, msgs, publish_secs);
    report.confirm_us = confirm_us;
    report.latency_us = latency_us;
    Ok(report
        .with("drain_secs", format!("{drain_secs:.3}"))
        .with("drain_rate", format!("{:.0}", msgs as f64 / drain_secs))
        .with("peak_rss_mib", mib_field(embedded, "VmHWM"))
        .with("full_rss_mib", full_rss))
}

/// `recovery`: fills a durable queue on an embedded broker, shuts it down, starts a new
/// one on the same data directory and times `Broker::start` (`start_ms`) and the first
/// delivery to a consumer subscribed as soon as it returns (`first_delivery_ms`, from the
/// call to `start`). Then drains the queue to check every message came back. rate and
/// secs are the fill's; there are no end-to-end latencies.
pub(super) async fn recovery(args: &BenchArgs) -> anyhow::Result<Report> {
    anyhow::ensure!(
        args.embedded,
        "recovery needs --embedded: it restarts the broker"
    );
    let msgs = args.msgs();
    anyhow::ensure!(msgs > 0, "recovery needs --msgs above 0");
    let dir = tempfile::tempdir().context("creating a temporary data directory")?;
    let config = embedded_config(dir.path());
    let queue = name(Scenario::Recovery, "");

    let broker = Broker::start(config.clone()).await?;
    let url = broker.url();
    let filled = async {
        let admin = super::connect(&url).await?;
        admin.declare_queue(&queue, QueueOptions::durable()).await?;
        let start = Instant::now();
        let confirm_us = fill(&url, &admin, &queue, args, start).await?;
        let fill_secs = start.elapsed().as_secs_f64();
        admin.close().await;
        anyhow::Ok((confirm_us, fill_secs))
    }
    .await;
    let full_rss = mib_field(true, "VmRSS");
    let stopping = Instant::now();
    broker.shutdown().await;
    let shutdown_ms = stopping.elapsed().as_millis();
    let (confirm_us, fill_secs) = filled?;

    let starting = Instant::now();
    let broker = Broker::start(config).await?;
    let start_ms = starting.elapsed().as_millis();
    let url = broker.url();
    let recovered = async {
        let mut consumer = Consumer::subscribe(&url, &queue, args.prefetch).await?;
        let first = consumer.next(0, msgs).await?;
        let first_delivery_ms = starting.elapsed().as_millis();
        consumer.client.ack(first.delivery_tag, false)?;
        let draining = Instant::now();
        consumer.drain(msgs - 1, draining).await?;
        let drain_rate = (msgs - 1) as f64 / draining.elapsed().as_secs_f64();
        let admin = super::connect(&url).await?;
        admin.delete_queue(&queue).await?;
        anyhow::Ok((first_delivery_ms, drain_rate))
    }
    .await;
    broker.shutdown().await;
    let (first_delivery_ms, drain_rate) = recovered?;

    let mut report = Report::new(Scenario::Recovery, msgs, fill_secs);
    report.confirm_us = confirm_us;
    Ok(report
        .with("shutdown_ms", shutdown_ms)
        .with("start_ms", start_ms)
        .with("first_delivery_ms", first_delivery_ms)
        .with("drain_rate", format!("{drain_rate:.0}"))
        .with("peak_rss_mib", mib_field(true, "VmHWM"))
        .with("full_rss_mib", full_rss))
}
