//! `latency`: persistent messages published open-loop on a fixed schedule (--rate per
//! second, message `i` due at `i / rate` s). Each body carries its *scheduled* send time,
//! so a broker (or client) stall shows up as latency for every message that should have
//! been sent during it, not only for the one that was waiting: coordinated omission is
//! corrected for. Confirm latencies are measured from the scheduled time too.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use broker::{Client, ClientError, QueueOptions};
use futures_util::StreamExt as _;
use futures_util::stream::FuturesUnordered;
use hdrhistogram::Histogram;
use tokio::sync::mpsc;

use super::clients::{Consumer, Stream, spawn_drains};
use super::{BenchArgs, Cleanup, Report, merged, name, new_histogram};

/// Publishing starts this long after setup, so every message has a schedule to meet.
pub(super) const LEAD_IN: Duration = Duration::from_millis(50);

pub(super) type Confirm = Pin<Box<dyn Future<Output = Result<(), ClientError>> + Send>>;

pub(super) async fn run(url: &str, args: &BenchArgs) -> anyhow::Result<Report> {
    anyhow::ensure!(args.consumers > 0, "latency needs at least one consumer");
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
    let queue = name(args.scenario, "");
    admin.declare_queue(&queue, QueueOptions::durable()).await?;
    cleanup.queues.push(queue.clone());
    let stream = Stream {
        exchange: String::new(),
        keys: Arc::from(vec![queue.clone()]),
        persistent: true,
        size: args.size,
    };
    let consumers = Consumer::subscribe_all(
        url,
        std::slice::from_ref(&queue),
        args.consumers,
        args.prefetch,
        msgs,
    )
    .await?;
    let mut clients = Vec::new();
    for _ in 0..args.publishers {
        let client = super::connect(url).await?;
        client.confirm_select().await?;
        clients.push(Arc::new(client));
    }

    super::mark_measured_start();
    let start = Instant::now() + LEAD_IN;
    let drains = spawn_drains(consumers, start);
    let mut pacers = Vec::new();
    let mut collectors = Vec::new();
    for (p, client) in clients.into_iter().enumerate() {
        let (confirms_tx, confirms_rx) = mpsc::unbounded_channel();
        collectors.push(tokio::spawn(collect_histogram(client.clone(), confirms_rx)));
        let (stream, rate, publishers) = (stream.clone(), args.rate, args.publishers);
        // A thread of its own: std sleeps are far finer than tokio's 1 ms timer.
        pacers.push(tokio::task::spawn_blocking(move || {
            pace(
                &client,
                &stream,
                (p as u64..msgs).step_by(publishers as usize),
                rate,
                start,
                &confirms_tx,
            )
        }));
    }
    let mut max_lag = Duration::ZERO;
    for pacer in pacers {
        max_lag = max_lag.max(pacer.await?);
    }
    let confirm_us = merged(collectors).await?;
    let latency_us = merged(drains).await?;
    let secs = start.elapsed().as_secs_f64();

    let mut report = Report::new(args.scenario, msgs, secs);
    report.latency_us = latency_us;
    report.confirm_us = confirm_us;
    let max_us = report.latency_us.max();
    Ok(report
        .with("target_rate", args.rate)
        .with("max_us", max_us)
        .with("max_send_lag_us", max_lag.as_micros()))
}

/// Due time of message `i`: `start + i / rate` seconds.
fn due(start: Instant, i: u64, rate: u64) -> Instant {
    let nanos = u128::from(i) * 1_000_000_000 / u128::from(rate);
    start + Duration::from_nanos(nanos as u64)
}

/// Publishes messages `indices` each at its due time (late ones at once, never skipped);
/// hands each confirm to the collector. Returns how late the latest send was
/// (sleep overshoot included).
pub(super) fn pace(
    client: &Client,
    stream: &Stream,
    indices: impl Iterator<Item = u64>,
    rate: u64,
    start: Instant,
    confirms: &mpsc::UnboundedSender<(Instant, Confirm)>,
) -> Duration {
    let mut max_lag = Duration::ZERO;
    for i in indices {
        let due = due(start, i, rate);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        max_lag = max_lag.max(Instant::now().saturating_duration_since(due));
        let stamp_us = due.duration_since(start).as_micros() as u64;
        let confirm = client.publish(stream.message(i, stamp_us), false);
        if confirms.send((due, Box::pin(confirm))).is_err() {
            break;
        }
    }
    max_lag
}

/// Awaits confirms as they come; returns each message's due time and its confirm latency
/// from then. Holds `_client` open until the last confirm: dropping it would close the
/// connection.
pub(super) async fn collect(
    _client: Arc<Client>,
    mut confirms: mpsc::UnboundedReceiver<(Instant, Confirm)>,
) -> anyhow::Result<Vec<(Instant, Duration)>> {
    let mut done = Vec::new();
    let mut in_flight = FuturesUnordered::new();
    loop {
        tokio::select! {
            next = confirms.recv() => match next {
                Some((due, confirm)) => {
                    in_flight.push(async move { confirm.await.map(|()| (due, due.elapsed())) });
                }
                None => break,
            },
            Some(confirmed) = in_flight.next(), if !in_flight.is_empty() => done.push(confirmed?),
        }
    }
    while let Some(confirmed) = in_flight.next().await {
        done.push(confirmed?);
    }
    Ok(done)
}

/// [`collect`] into a histogram of microseconds.
pub(super) async fn collect_histogram(
    client: Arc<Client>,
    confirms: mpsc::UnboundedReceiver<(Instant, Confirm)>,
) -> anyhow::Result<Histogram<u64>> {
    let mut confirm_us = new_histogram();
    for (_, latency) in collect(client, confirms).await? {
        confirm_us.saturating_record(latency.as_micros() as u64);
    }
    Ok(confirm_us)
}
