//! `--protocol amqp`: the throughput scenarios (persistent, transient, topic, fanout)
//! through lapin against any AMQP 0-9-1 URL: this broker's AMQP listener, or RabbitMQ for
//! a side-by-side comparison. The clients have the JSON ones' shape: publishers in
//! confirm mode with at most --window publishes unconfirmed, consumers with --prefetch
//! acking each delivery, bodies starting with their send time.

use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures_util::StreamExt as _;
use futures_util::stream::FuturesUnordered;
use hdrhistogram::Histogram;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use tokio::task::JoinHandle;

use super::clients::{IDLE_TIMEOUT, Stream, body_stamp, client_share, stamped_body};
use super::throughput::Topology;
use super::{BenchArgs, Report, Scenario, merged, new_histogram};

/// `--protocol`: the clients' protocol.
#[derive(Clone, Copy, PartialEq, clap::ValueEnum)]
pub(super) enum ProtocolArg {
    Json,
    Amqp,
    /// STOMP 1.2 over TCP to --stomp-addr (persistent, transient; see `stomp.rs`).
    Stomp,
}

/// The AMQP URL `--amqp-url` defaults to: the broker's default listener, as guest.
pub(super) const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

async fn open(url: &str) -> anyhow::Result<(Connection, Channel)> {
    let connection = Connection::connect(url, ConnectionProperties::default())
        .await
        .with_context(|| format!("connecting to {url}"))?;
    let channel = connection.create_channel().await?;
    Ok((connection, channel))
}

pub(super) async fn run(url: &str, args: &BenchArgs) -> anyhow::Result<Report> {
    anyhow::ensure!(
        matches!(
            args.scenario,
            Scenario::Persistent | Scenario::Transient | Scenario::Topic | Scenario::Fanout
        ),
        "--protocol amqp runs the persistent, transient, topic and fanout scenarios"
    );
    let topology = Topology::of(args);
    anyhow::ensure!(
        topology.exchange.is_some() || topology.queues.len() == 1,
        "--protocol amqp: --queues applies to fanout only"
    );
    let (connection, admin) = open(url).await?;
    let result = measure(url, args, &topology, &admin).await;
    let cleaned = delete(&admin, &topology).await;
    let _ = connection.close(200, "bench done".into()).await;
    let report = result?;
    cleaned?;
    Ok(report)
}

async fn declare(admin: &Channel, topology: &Topology) -> anyhow::Result<()> {
    let durable = topology.durable;
    for queue in &topology.queues {
        let options = QueueDeclareOptions {
            durable,
            ..Default::default()
        };
        admin
            .queue_declare(queue.as_str().into(), options, FieldTable::default())
            .await
            .with_context(|| format!("declaring `{queue}`"))?;
    }
    if let Some((exchange, kind)) = &topology.exchange {
        let options = ExchangeDeclareOptions {
            durable,
            ..Default::default()
        };
        let kind = ExchangeKind::Custom(kind.to_string());
        admin
            .exchange_declare(
                exchange.as_str().into(),
                kind,
                options,
                FieldTable::default(),
            )
            .await
            .with_context(|| format!("declaring `{exchange}`"))?;
        for (queue, key) in &topology.bindings {
            admin
                .queue_bind(
                    queue.as_str().into(),
                    exchange.as_str().into(),
                    key.as_str().into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }
    }
    Ok(())
}

/// Deletes what the scenario declared (a queue or exchange already gone is no error).
async fn delete(admin: &Channel, topology: &Topology) -> anyhow::Result<()> {
    if let Some((exchange, _)) = &topology.exchange {
        admin
            .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
            .await
            .with_context(|| format!("deleting `{exchange}`"))?;
    }
    for queue in &topology.queues {
        admin
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await
            .with_context(|| format!("deleting `{queue}`"))?;
    }
    Ok(())
}

async fn measure(
    url: &str,
    args: &BenchArgs,
    topology: &Topology,
    admin: &Channel,
) -> anyhow::Result<Report> {
    declare(admin, topology).await?;
    let msgs = args.msgs();
    let stream = Stream {
        exchange: topology
            .exchange
            .as_ref()
            .map_or(String::new(), |(x, _)| x.clone()),
        keys: Arc::from(topology.keys.clone()),
        persistent: topology.durable,
        size: args.size,
    };
    // Every queue receives every message it is bound for, shared by its consumers.
    let mut consumers = Vec::new();
    for queue in &topology.queues {
        for i in 0..args.consumers {
            let share = client_share(msgs, args.consumers, i);
            let consumer = AmqpConsumer::subscribe(url, queue, args.prefetch).await?;
            consumers.push((consumer, share));
        }
    }

    super::mark_measured_start();
    let start = Instant::now();
    let drains: Vec<JoinHandle<anyhow::Result<Histogram<u64>>>> = consumers
        .into_iter()
        .map(|(consumer, share)| tokio::spawn(consumer.drain(share, start)))
        .collect();
    let mut first = 0;
    let publishers: Vec<_> = (0..args.publishers)
        .map(|i| {
            let share = client_share(msgs, args.publishers, i);
            let range = first..first + share;
            first += share;
            tokio::spawn(publish(
                url.to_owned(),
                stream.clone(),
                range,
                args.window,
                start,
            ))
        })
        .collect();
    let confirm_us = merged(publishers).await?;
    let latency_us = merged(drains).await?;
    let secs = start.elapsed().as_secs_f64();

    let mut report = Report::new(args.scenario, msgs, secs);
    report.confirm_us = confirm_us;
    report.latency_us = latency_us;
    Ok(super::throughput::scenario_fields(
        report,
        args,
        &topology.queues,
        false,
        msgs,
        secs,
    ))
}

/// Publishes messages `range` on one channel in confirm mode, at most `window`
/// unconfirmed; returns confirm latencies. Publishes are pipelined: lapin resolves a
/// publish once its frames are written, and its confirm on the broker's `basic.ack`.
async fn publish(
    url: String,
    stream: Stream,
    range: Range<u64>,
    window: usize,
    start: Instant,
) -> anyhow::Result<Histogram<u64>> {
    let (connection, channel) = open(&url).await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let properties = match stream.persistent {
        true => BasicProperties::default().with_delivery_mode(2),
        false => BasicProperties::default(),
    };
    let exchange = stream.exchange.as_str();
    let mut confirm_us = new_histogram();
    let mut in_flight = FuturesUnordered::new();
    for n in range {
        while in_flight.len() >= window.max(1) {
            record(&mut confirm_us, in_flight.next().await.expect("non-empty"))?;
        }
        let sent = Instant::now();
        let body = stamped_body(stream.size, sent.duration_since(start).as_micros() as u64);
        let (channel, properties) = (channel.clone(), properties.clone());
        let (exchange, key) = (exchange.into(), stream.key(n).into());
        in_flight.push(async move {
            let confirm = channel
                .basic_publish(
                    exchange,
                    key,
                    BasicPublishOptions::default(),
                    &body,
                    properties,
                )
                .await?;
            let confirmation = confirm.await?;
            Ok::<_, lapin::Error>((confirmation, sent.elapsed()))
        });
    }
    while let Some(confirmed) = in_flight.next().await {
        record(&mut confirm_us, confirmed)?;
    }
    let _ = connection.close(200, "published".into()).await;
    Ok(confirm_us)
}

fn record(
    histogram: &mut Histogram<u64>,
    confirmed: Result<(lapin::Confirmation, Duration), lapin::Error>,
) -> anyhow::Result<()> {
    let (confirmation, took) = confirmed?;
    anyhow::ensure!(
        confirmation.is_ack(),
        "the broker refused a publish (basic.nack)"
    );
    histogram.saturating_record(took.as_micros() as u64);
    Ok(())
}

/// A consumer (manual acks, --prefetch) on its own connection that has not consumed yet.
struct AmqpConsumer {
    connection: Connection,
    consumer: lapin::Consumer,
    queue: String,
}

impl AmqpConsumer {
    async fn subscribe(url: &str, queue: &str, prefetch: u32) -> anyhow::Result<AmqpConsumer> {
        let (connection, channel) = open(url).await?;
        // AMQP's prefetch is 16 bits.
        let prefetch = u16::try_from(prefetch).unwrap_or(u16::MAX);
        channel
            .basic_qos(prefetch, BasicQosOptions::default())
            .await?;
        let consumer = channel
            .basic_consume(
                queue.into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok(AmqpConsumer {
            connection,
            consumer,
            queue: queue.to_owned(),
        })
    }

    /// Consumes and acks `count` messages; returns end-to-end latencies. Acks are sent
    /// without waiting for each to be written before the next delivery is taken.
    async fn drain(mut self, count: u64, start: Instant) -> anyhow::Result<Histogram<u64>> {
        let mut latency_us = new_histogram();
        let mut acks = FuturesUnordered::new();
        let mut got = 0;
        while got < count {
            tokio::select! {
                Some(acked) = acks.next(), if !acks.is_empty() => {
                    let acked: Result<bool, lapin::Error> = acked;
                    acked?;
                }
                next = tokio::time::timeout(IDLE_TIMEOUT, self.consumer.next()) => {
                    let delivery = match next {
                        Ok(Some(delivery)) => delivery?,
                        Ok(None) => anyhow::bail!(
                            "consumer of `{}` ended after {got} of {count} messages",
                            self.queue
                        ),
                        Err(_) => anyhow::bail!(
                            "no delivery from `{}` for {} s after {got} of {count} messages",
                            self.queue,
                            IDLE_TIMEOUT.as_secs()
                        ),
                    };
                    let sent_us = body_stamp(&delivery.data)?;
                    let now_us = start.elapsed().as_micros() as u64;
                    latency_us.saturating_record(now_us.saturating_sub(sent_us));
                    got += 1;
                    acks.push(async move {
                        delivery.acker.ack(BasicAckOptions::default()).await
                    });
                }
            }
        }
        while let Some(acked) = acks.next().await {
            acked?;
        }
        let _ = self.connection.close(200, "drained".into()).await;
        Ok(latency_us)
    }
}
