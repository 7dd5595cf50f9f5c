//! `broker bench`: throughput and latency scenarios against a running broker or an
//! embedded one, each printing exactly one line of figures.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use broker::{Broker, Client, Config, Message, Properties, QueueOptions};
use clap::{Args, ValueEnum};
use futures_util::StreamExt as _;
use futures_util::stream::FuturesUnordered;
use hdrhistogram::Histogram;

use super::DEFAULT_SERVER;

#[derive(Args)]
pub struct BenchArgs {
    #[arg(value_enum)]
    scenario: Scenario,
    /// Start an in-process broker on a temporary data directory instead of using --server.
    #[arg(long)]
    embedded: bool,
    #[arg(long, default_value = DEFAULT_SERVER)]
    server: String,
    /// Messages to publish (in total).
    #[arg(long, default_value_t = 200_000)]
    msgs: u64,
    /// Body size in bytes.
    #[arg(long, default_value_t = 256)]
    size: usize,
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    publishers: u64,
    /// Consumers; 0 measures confirmed publishing alone.
    #[arg(long, default_value_t = 1)]
    consumers: u64,
    /// Unconfirmed publishes in flight per publisher.
    #[arg(long, default_value_t = 2000)]
    window: usize,
    /// Consumer prefetch.
    #[arg(long, default_value_t = 2000)]
    prefetch: u32,
}

#[derive(Clone, Copy, ValueEnum)]
enum Scenario {
    /// Durable queue, persistent messages, confirms, manual acks.
    Persistent,
    /// The same with transient messages.
    Transient,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::Persistent => "persistent",
            Scenario::Transient => "transient",
        }
    }
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let embedded = if args.embedded {
        let dir = tempfile::tempdir().context("creating a temporary data directory")?;
        let mut config = Config::new(dir.path());
        config.listen = "127.0.0.1:0".parse()?;
        let broker = Broker::start(config).await?;
        Some((broker, dir))
    } else {
        None
    };
    let url = embedded
        .as_ref()
        .map_or(args.server.clone(), |(b, _)| b.url());
    let result = point_to_point(&url, &args).await;
    if let Some((broker, _dir)) = embedded {
        broker.shutdown().await;
    }
    println!("{}", result?);
    Ok(())
}

/// Publishers → one queue → consumers; every message confirmed and acked.
async fn point_to_point(url: &str, args: &BenchArgs) -> anyhow::Result<String> {
    let persistent = matches!(args.scenario, Scenario::Persistent);
    let queue = format!("bench-{}-{}", args.scenario.name(), std::process::id());
    let admin = Client::connect(url).await?;
    admin
        .declare_queue(
            &queue,
            QueueOptions {
                durable: persistent,
                ..Default::default()
            },
        )
        .await?;

    let start = Instant::now();
    // With --consumers 0 the run measures publishing alone (confirmed publishes/s).
    let consumers: Vec<_> = (0..args.consumers)
        .map(|i| {
            let share = args.msgs / args.consumers + u64::from(i < args.msgs % args.consumers);
            tokio::spawn(consume(
                url.to_owned(),
                queue.clone(),
                share,
                args.prefetch,
                start,
            ))
        })
        .collect();
    let publishers: Vec<_> = (0..args.publishers)
        .map(|i| {
            let share = args.msgs / args.publishers + u64::from(i < args.msgs % args.publishers);
            let template = Message {
                routing_key: queue.clone(),
                properties: Properties {
                    persistent,
                    ..Default::default()
                },
                ..Default::default()
            };
            tokio::spawn(publish(
                url.to_owned(),
                template,
                share,
                args.window,
                args.size,
                start,
            ))
        })
        .collect();

    let mut confirm_us = new_histogram();
    for p in publishers {
        confirm_us.add(p.await??)?;
    }
    let mut latency_us = new_histogram();
    for c in consumers {
        latency_us.add(c.await??)?;
    }
    // A publish-only run has no end-to-end figures: printed as `-`.
    let quantile = |q: f64| match latency_us.is_empty() {
        true => "-".to_string(),
        false => latency_us.value_at_quantile(q).to_string(),
    };
    let secs = start.elapsed().as_secs_f64();
    admin.delete_queue(&queue).await?;
    Ok(format!(
        "scenario={} msgs={} secs={:.3} rate={:.0} p50_us={} p99_us={} p999_us={} publish_confirm_p99_us={}",
        args.scenario.name(),
        args.msgs,
        secs,
        args.msgs as f64 / secs,
        quantile(0.5),
        quantile(0.99),
        quantile(0.999),
        confirm_us.value_at_quantile(0.99),
    ))
}

/// Microseconds from 1 µs to 10 minutes at 3 significant digits; longer values saturate.
fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

/// Publishes `count` messages keeping at most `window` unconfirmed; returns confirm
/// latencies. Each body starts with its send time (µs since `start`) for end-to-end latency.
async fn publish(
    url: String,
    template: Message,
    count: u64,
    window: usize,
    size: usize,
    start: Instant,
) -> anyhow::Result<Histogram<u64>> {
    let client = Client::connect(&url).await?;
    client.confirm_select().await?;
    let mut confirm_us = new_histogram();
    let mut in_flight = FuturesUnordered::new();
    for _ in 0..count {
        while in_flight.len() >= window {
            record(&mut confirm_us, in_flight.next().await.expect("non-empty"))?;
        }
        let sent = Instant::now();
        let mut body = format!("{:020}", sent.duration_since(start).as_micros());
        body.extend(std::iter::repeat_n('x', size.saturating_sub(body.len())));
        let mut message = template.clone();
        message.body = body.into();
        let confirm = client.publish(message, false);
        in_flight.push(async move { confirm.await.map(|()| sent.elapsed()) });
    }
    while let Some(confirmed) = in_flight.next().await {
        record(&mut confirm_us, confirmed)?;
    }
    Ok(confirm_us)
}

fn record(
    histogram: &mut Histogram<u64>,
    confirmed: Result<Duration, broker::ClientError>,
) -> anyhow::Result<()> {
    histogram.saturating_record(confirmed?.as_micros() as u64);
    Ok(())
}

/// Consumes and acks `count` messages; returns end-to-end latencies.
async fn consume(
    url: String,
    queue: String,
    count: u64,
    prefetch: u32,
    start: Instant,
) -> anyhow::Result<Histogram<u64>> {
    let client = Arc::new(Client::connect(&url).await?);
    let mut subscription = client.consume(&queue, prefetch).await?;
    let mut latency_us = new_histogram();
    for _ in 0..count {
        let delivery = subscription
            .next()
            .await
            .context("subscription ended early")?;
        let stamp = delivery
            .message
            .body
            .get(..20)
            .context("body shorter than its timestamp")?;
        let sent_us: u64 = std::str::from_utf8(stamp)?.parse()?;
        let now_us = start.elapsed().as_micros() as u64;
        latency_us.saturating_record(now_us.saturating_sub(sent_us));
        client.ack(delivery.delivery_tag, false)?;
    }
    Ok(latency_us)
}
