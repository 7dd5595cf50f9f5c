//! The clients every scenario drives: publishers with a confirm window and consumers that
//! ack each delivery, both timestamping messages in their bodies.

use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use broker::protocol::Delivery;
use broker::{Client, ClientError, Message, Properties, Subscription};
use futures_util::StreamExt as _;
use futures_util::stream::FuturesUnordered;
use hdrhistogram::Histogram;
use tokio::task::JoinHandle;

use super::{STAMP_LEN, new_histogram};

/// What publishers send: to `exchange`, routing keys cycled from `keys`.
#[derive(Clone)]
pub(super) struct Stream {
    pub(super) exchange: String,
    pub(super) keys: Arc<[String]>,
    pub(super) persistent: bool,
    pub(super) size: usize,
}

impl Stream {
    /// Message `n` of the run; its body starts with `stamp_us` (µs since the run's start).
    pub(super) fn message(&self, n: u64, stamp_us: u64) -> Message {
        Message {
            exchange: self.exchange.clone(),
            routing_key: self.key(n).to_owned(),
            properties: Properties {
                persistent: self.persistent,
                ..Default::default()
            },
            body: stamped_body(self.size, stamp_us).into(),
            ..Default::default()
        }
    }

    /// The routing key of message `n`.
    pub(super) fn key(&self, n: u64) -> &str {
        &self.keys[(n % self.keys.len() as u64) as usize]
    }
}

/// A body of `size` bytes (at least [`STAMP_LEN`]) starting with `stamp_us`.
pub(super) fn stamped_body(size: usize, stamp_us: u64) -> Vec<u8> {
    // The stamp's decimal digits, zero-padded (20 digits hold any u64), then filler:
    // written in place, the bench's own cost per message stays small next to the
    // broker's it measures.
    let mut body = vec![b'x'; size.max(STAMP_LEN)];
    let mut rest = stamp_us;
    for digit in body[..STAMP_LEN].iter_mut().rev() {
        *digit = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
    body
}

/// The send time (µs since the run's start) a body starts with.
pub(super) fn body_stamp(body: &[u8]) -> anyhow::Result<u64> {
    let stamp = body
        .get(..STAMP_LEN)
        .context("body shorter than its timestamp")?;
    Ok(std::str::from_utf8(stamp)?.parse()?)
}

/// Client `i`'s share of `msgs` messages split among `clients` publishers or consumers.
pub(super) fn client_share(msgs: u64, clients: u64, i: u64) -> u64 {
    msgs / clients + u64::from(i < msgs % clients)
}

/// Starts `publishers` tasks sharing `msgs` messages, publisher `i` sending
/// `streams[i % streams.len()]`; each returns its confirm latencies.
pub(super) fn spawn_publishers(
    url: &str,
    streams: &[Stream],
    msgs: u64,
    publishers: u64,
    window: usize,
    start: Instant,
) -> Vec<JoinHandle<anyhow::Result<Histogram<u64>>>> {
    let mut first = 0;
    (0..publishers)
        .map(|i| {
            let share = client_share(msgs, publishers, i);
            let stream = &streams[i as usize % streams.len()];
            let task = tokio::spawn(publish(
                url.to_owned(),
                stream.clone(),
                first..first + share,
                window,
                start,
            ));
            first += share;
            task
        })
        .collect()
}

/// Publishes messages `range` keeping at most `window` unconfirmed; returns confirm
/// latencies. Each body starts with its send time (µs since `start`).
async fn publish(
    url: String,
    stream: Stream,
    range: Range<u64>,
    window: usize,
    start: Instant,
) -> anyhow::Result<Histogram<u64>> {
    let client = super::connect(&url).await?;
    client.confirm_select().await?;
    let mut confirm_us = new_histogram();
    let mut in_flight = FuturesUnordered::new();
    for n in range {
        while in_flight.len() >= window.max(1) {
            record(&mut confirm_us, in_flight.next().await.expect("non-empty"))?;
        }
        let sent = Instant::now();
        let message = stream.message(n, sent.duration_since(start).as_micros() as u64);
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
    confirmed: Result<Duration, ClientError>,
) -> anyhow::Result<()> {
    histogram.saturating_record(confirmed?.as_micros() as u64);
    Ok(())
}

/// A consumer stops waiting (and the run fails) after this long without a delivery.
pub(super) const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// A subscribed consumer (manual acks) that has not consumed yet.
pub(super) struct Consumer {
    pub(super) client: Client,
    subscription: Subscription,
    queue: String,
}

impl Consumer {
    pub(super) async fn subscribe(
        url: &str,
        queue: &str,
        prefetch: u32,
    ) -> anyhow::Result<Consumer> {
        let client = super::connect(url).await?;
        let subscription = client.consume(queue, prefetch).await?;
        Ok(Consumer {
            client,
            subscription,
            queue: queue.to_owned(),
        })
    }

    /// `consumers` subscriptions to each queue; each consumer's share of `per_queue`.
    pub(super) async fn subscribe_all(
        url: &str,
        queues: &[String],
        consumers: u64,
        prefetch: u32,
        per_queue: u64,
    ) -> anyhow::Result<Vec<(Consumer, u64)>> {
        let mut all = Vec::new();
        for queue in queues {
            for i in 0..consumers {
                let share = per_queue / consumers + u64::from(i < per_queue % consumers);
                all.push((Consumer::subscribe(url, queue, prefetch).await?, share));
            }
        }
        Ok(all)
    }

    /// The next delivery, or an error after `IDLE_TIMEOUT` without one.
    pub(super) async fn next(&mut self, got: u64, count: u64) -> anyhow::Result<Delivery> {
        match tokio::time::timeout(IDLE_TIMEOUT, self.subscription.next()).await {
            Ok(Some(delivery)) => Ok(delivery),
            Ok(None) => anyhow::bail!(
                "subscription to `{}` ended after {got} of {count} messages",
                self.queue
            ),
            Err(_) => anyhow::bail!(
                "no delivery from `{}` for {} s after {got} of {count} messages",
                self.queue,
                IDLE_TIMEOUT.as_secs()
            ),
        }
    }

    /// Consumes and acks `count` messages; returns end-to-end latencies (delivery time
    /// minus the body's timestamp, both µs since `start`).
    pub(super) async fn drain(
        mut self,
        count: u64,
        start: Instant,
    ) -> anyhow::Result<Histogram<u64>> {
        let mut latency_us = new_histogram();
        for got in 0..count {
            let delivery = self.next(got, count).await?;
            let sent_us = body_stamp(&delivery.message.body)?;
            let now_us = start.elapsed().as_micros() as u64;
            latency_us.saturating_record(now_us.saturating_sub(sent_us));
            self.client.ack(delivery.delivery_tag, false)?;
        }
        Ok(latency_us)
    }
}

/// Starts draining every consumer's share.
pub(super) fn spawn_drains(
    consumers: Vec<(Consumer, u64)>,
    start: Instant,
) -> Vec<JoinHandle<anyhow::Result<Histogram<u64>>>> {
    consumers
        .into_iter()
        .map(|(consumer, share)| tokio::spawn(consumer.drain(share, start)))
        .collect()
}
