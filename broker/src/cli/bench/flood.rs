//! `flood`: one publisher without confirms at full speed into a queue nobody consumes
//! (--durable: a durable queue and persistent messages; else transient), until the broker
//! says `blocked` or --msgs were sent. Then a consumer drains the queue: the broker should
//! clear its memory alarm (`unblocked`) and every message published should arrive.
//!
//! The publisher stays at most ~3 MiB ahead of the broker: after every `STEP_BYTES` of
//! bodies it sends a `queue_info` on the same connection, whose reply comes after the
//! broker has taken everything sent before it, and waits for the one before last. Without
//! that the bench's own unbounded send queue would grow instead of the broker's memory,
//! and far more than the broker took before blocking would wait in it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use broker::server::MemoryWatermark;
use broker::{Client, QueueOptions};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::watch;

use super::clients::{Consumer, Stream};
use super::{BenchArgs, Cleanup, Report, name, procfs};

/// Bytes of bodies between two `queue_info` barriers (at least 16 messages).
const STEP_BYTES: u64 = 1 << 20;
/// How long the drain waits for a delivery, and for `unblocked` after the drain.
const QUIET: Duration = Duration::from_secs(20);
/// How often the broker's resident memory is sampled.
const RSS_EVERY: Duration = Duration::from_millis(10);

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
    let cap = args.msgs();
    let queue = name(args.scenario, "");
    let options = match args.durable {
        true => QueueOptions::durable(),
        false => QueueOptions::default(),
    };
    admin.declare_queue(&queue, options).await?;
    cleanup.queues.push(queue.clone());
    let watermark = watermark(args).await?;
    let stream = Stream {
        exchange: String::new(),
        keys: Arc::from(vec![queue.clone()]),
        persistent: args.durable,
        size: args.size,
    };
    let publisher = Arc::new(super::connect(url).await?);
    let blocked = publisher.blocked();
    let alarm = tokio::spawn(watch_alarm(blocked.clone()));
    let (stop_rss, rss) = sample_rss(super::broker_pid());

    super::mark_measured_start();
    let start = Instant::now();
    let published = publish(&publisher, &queue, &stream, cap, blocked, start).await?;
    let publish_secs = start.elapsed().as_secs_f64();

    let consumer = Consumer::subscribe(url, &queue, args.prefetch).await?;
    let (arrived, latency_us) = drain(consumer, published, start).await;
    // The alarm clears once memory is back under its low mark (sampled every 50 ms).
    let (was_blocked, unblocked) = match tokio::time::timeout(QUIET, alarm).await {
        Ok(seen) => seen?,
        Err(_) => (true, false),
    };
    let secs = start.elapsed().as_secs_f64();
    let _ = stop_rss.send(true);
    let peak = rss.await?;
    drop(publisher);

    let mut report = Report::new(args.scenario, published, secs);
    report.rate = published as f64 / publish_secs;
    report.latency_us = latency_us;
    let yes = |b: bool| if b { "yes" } else { "no" };
    let mib = |b: Option<u64>| b.map_or("-".into(), |b| format!("{:.0}", b as f64 / 1048576.0));
    Ok(report
        .with("durable", yes(args.durable))
        .with("blocked", yes(was_blocked))
        .with("unblocked", yes(unblocked))
        .with("delivered", arrived)
        .with("lost", published - arrived)
        .with("peak_rss_mib", mib(peak))
        .with("watermark_mib", mib(watermark)))
}

/// Publishes until the broker blocks the connection or `cap` were sent; returns how many.
async fn publish(
    publisher: &Arc<Client>,
    queue: &str,
    stream: &Stream,
    cap: u64,
    mut blocked: watch::Receiver<Option<String>>,
    start: Instant,
) -> anyhow::Result<u64> {
    let mut published = 0;
    let step_msgs = (STEP_BYTES / stream.size.max(1) as u64).max(16);
    let mut barriers: std::collections::VecDeque<tokio::task::JoinHandle<Result<(), _>>> =
        std::collections::VecDeque::new();
    while published < cap && blocked.borrow().is_none() {
        let step = step_msgs.min(cap - published);
        for n in published..published + step {
            let stamp = start.elapsed().as_micros() as u64;
            drop(publisher.publish(stream.message(n, stamp), false));
        }
        published += step;
        // Spawned so it is sent now, behind the publishes.
        let (client, queue) = (publisher.clone(), queue.to_owned());
        barriers.push_back(tokio::spawn(async move {
            client.queue_info(&queue).await.map(drop)
        }));
        if barriers.len() > 2 {
            let oldest = barriers.pop_front().expect("three barriers");
            tokio::select! {
                reached = oldest => reached?.context("the publisher's barrier")?,
                // Blocked: the connection is not read any more, the barrier waits.
                _ = blocked.wait_for(|b| b.is_some()) => break,
            }
        }
    }
    Ok(published)
}

/// Whether the publisher was told `blocked`, and then `unblocked`.
async fn watch_alarm(mut blocked: watch::Receiver<Option<String>>) -> (bool, bool) {
    let mut seen = false;
    loop {
        match blocked.borrow_and_update().is_some() {
            true => seen = true,
            false if seen => return (true, true),
            false => {}
        }
        if blocked.changed().await.is_err() {
            return (seen, false);
        }
    }
}

/// Consumes (and acks) until `expected` arrived or nothing came for `QUIET`: how many
/// arrived and their latencies from publish.
async fn drain(
    mut consumer: Consumer,
    expected: u64,
    start: Instant,
) -> (u64, hdrhistogram::Histogram<u64>) {
    let mut latency_us = super::new_histogram();
    let mut arrived = 0;
    while arrived < expected {
        let Ok(Ok(delivery)) = tokio::time::timeout(QUIET, consumer.next(arrived, expected)).await
        else {
            break;
        };
        let sent_us = delivery
            .message
            .body
            .get(..super::STAMP_LEN)
            .and_then(|stamp| std::str::from_utf8(stamp).ok()?.parse::<u64>().ok());
        if let Some(sent_us) = sent_us {
            let now_us = start.elapsed().as_micros() as u64;
            latency_us.saturating_record(now_us.saturating_sub(sent_us));
        }
        if consumer.client.ack(delivery.delivery_tag, false).is_err() {
            break;
        }
        arrived += 1;
    }
    (arrived, latency_us)
}

/// Samples the broker's resident memory until told to stop; returns the peak.
fn sample_rss(pid: Option<u32>) -> (watch::Sender<bool>, tokio::task::JoinHandle<Option<u64>>) {
    let (stop, mut stopped) = watch::channel(false);
    let task = tokio::spawn(async move {
        let pid = pid?;
        let mut peak = 0;
        loop {
            peak = peak.max(procfs::resident_bytes(pid).unwrap_or(0));
            tokio::select! {
                _ = stopped.changed() => break,
                _ = tokio::time::sleep(RSS_EVERY) => {}
            }
        }
        Some(peak)
    });
    (stop, task)
}

/// The broker's watermark in bytes: from --http's /metrics, else --watermark.
async fn watermark(args: &BenchArgs) -> anyhow::Result<Option<u64>> {
    if let Some(http) = &args.http {
        // The same user as on --server (guest without one).
        let (_, user, password) = broker::client::credentials::split_credentials(args.server());
        let login = broker::client::credentials::basic_header(&user, &password);
        let metrics = http_get(http, "/metrics", &login).await?;
        let bytes = metrics
            .lines()
            .find_map(|l| l.strip_prefix("broker_memory_high_watermark_bytes "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .with_context(|| format!("no broker_memory_high_watermark_bytes at {http}/metrics"))?;
        return Ok(Some(bytes as u64));
    }
    match &args.watermark {
        Some(text) => Ok(Some(
            MemoryWatermark::parse(text)
                .map_err(|e| anyhow::anyhow!("--watermark {e}"))?
                .bytes(),
        )),
        None => Ok(None),
    }
}

/// The body of `GET path` from `http://host:port` (HTTP/1.0, so the server closes),
/// sending `authorization`.
async fn http_get(base: &str, path: &str, authorization: &str) -> anyhow::Result<String> {
    let authority = base
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap_or_default();
    let mut stream = tokio::net::TcpStream::connect(authority)
        .await
        .with_context(|| format!("connecting to {authority}"))?;
    let request = format!(
        "GET {path} HTTP/1.0\r\nHost: {authority}\r\nAuthorization: {authorization}\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    tokio::time::timeout(QUIET, stream.read_to_string(&mut response))
        .await
        .context("reading /metrics")??;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .context("an HTTP response")?;
    anyhow::ensure!(head.contains(" 200 "), "GET {path}: {head}");
    Ok(body.to_owned())
}
