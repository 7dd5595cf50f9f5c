//! `handler`: how fast an in-broker Wasm handler consumes a queue, against a remote
//! consumer on the same backlog.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use broker::protocol::{AttachHandler, HandlerMode};
use broker::{Client, QueueOptions};

use super::clients::{Consumer, Stream, spawn_drains, spawn_publishers};
use super::{BenchArgs, Cleanup, Report, merged, name};

/// Fills a durable queue with --msgs persistent messages twice: the first time a remote
/// consumer (--consumers connections, --prefetch, acking each) drains it
/// (`remote_rate`), the second time the bundled `flaky` handler with no failures — a
/// trivial handler that acks — attached with concurrency --consumers (`rate`).
/// `overhead` is remote_rate / rate; `handler_mean_call_us` the mean Wasm call.
pub(super) async fn run(url: &str, args: &BenchArgs) -> anyhow::Result<Report> {
    anyhow::ensure!(
        (1..=64).contains(&args.consumers),
        "handler needs --consumers 1 to 64 (the handler's concurrency)"
    );
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
    // Compile the bundled plugin once (first use) outside the measurement.
    let warm = name(args.scenario, "-warm");
    admin.declare_queue(&warm, QueueOptions::default()).await?;
    cleanup.queues.push(warm.clone());
    admin.attach_handler(trivial(&warm, 1)).await?;
    admin.detach_handler(&warm, "flaky").await?;

    let stream = Stream {
        exchange: String::new(),
        keys: Arc::from(vec![queue.clone()]),
        persistent: true,
        size: args.size,
    };

    // A remote consumer drains the backlog.
    fill(url, &stream, args).await?;
    let start = Instant::now();
    let consumers = Consumer::subscribe_all(
        url,
        std::slice::from_ref(&queue),
        args.consumers,
        args.prefetch,
        msgs,
    )
    .await?;
    merged(spawn_drains(consumers, start)).await?;
    let remote_secs = start.elapsed().as_secs_f64();
    // The remote consumers' connections are closed: only the handler remains.
    wait_until_idle(admin, &queue, 0).await?;

    // The handler drains the same backlog.
    fill(url, &stream, args).await?;
    let start = Instant::now();
    admin
        .attach_handler(trivial(&queue, args.consumers as u32))
        .await?;
    loop {
        let info = admin.queue_info(&queue).await?;
        if info.ready + info.unacked == 0 {
            break;
        }
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(600),
            "the handler did not drain `{queue}` in 10 minutes"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let handler_secs = start.elapsed().as_secs_f64();
    let list = admin.list_handlers().await?;
    let row = list["handlers"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|h| h["queue"] == queue.as_str())
        .cloned()
        .unwrap_or_default();
    let handled = row["stats"]["handled"].as_u64().unwrap_or(0);
    anyhow::ensure!(
        handled == msgs,
        "the handler handled {handled} of {msgs} messages"
    );
    let plugins = admin.list_plugins().await?;
    let flaky = plugins["plugins"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == "flaky")
        .cloned()
        .unwrap_or_default();
    let calls = flaky["stats"]["calls"].as_u64().unwrap_or(0).max(1);
    let time = &flaky["stats"]["call_time"];
    let call_ns =
        time["secs"].as_u64().unwrap_or(0) * 1_000_000_000 + time["nanos"].as_u64().unwrap_or(0);
    admin.detach_handler(&queue, "flaky").await?;

    let remote_rate = msgs as f64 / remote_secs;
    let rate = msgs as f64 / handler_secs;
    Ok(Report::new(args.scenario, msgs, handler_secs)
        .with("remote_rate", format!("{remote_rate:.0}"))
        .with("remote_secs", format!("{remote_secs:.3}"))
        .with("overhead", format!("{:.2}", remote_rate / rate))
        .with(
            "handler_mean_call_us",
            format!("{:.2}", call_ns as f64 / calls as f64 / 1e3),
        )
        .with("concurrency", args.consumers))
}

/// The bundled `flaky` handler with no failures: it acks every message.
fn trivial(queue: &str, concurrency: u32) -> AttachHandler {
    AttachHandler {
        queue: queue.to_owned(),
        plugin: "flaky".into(),
        mode: HandlerMode::Consume,
        concurrency,
        config: BTreeMap::from([("failures".to_owned(), "0".to_owned())]),
    }
}

async fn fill(url: &str, stream: &Stream, args: &BenchArgs) -> anyhow::Result<()> {
    let publishers = spawn_publishers(
        url,
        std::slice::from_ref(stream),
        args.msgs(),
        args.publishers,
        args.window,
        Instant::now(),
    );
    merged(publishers).await?;
    Ok(())
}

/// Waits until the queue has `consumers` consumers and nothing unacked.
async fn wait_until_idle(admin: &Client, queue: &str, consumers: u64) -> anyhow::Result<()> {
    for _ in 0..5000 {
        let info = admin.queue_info(queue).await?;
        if info.consumers == consumers && info.unacked == 0 {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    anyhow::bail!("`{queue}` did not settle")
}
