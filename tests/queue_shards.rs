//! Queues partitioned into shards (`broker serve --queue-shards N`): each queue lives on
//! one shard, and a connection remembers which shard gave each delivery tag. Seen from a
//! client nothing changes: tags are 1, 2, 3, … on each channel whichever shard delivered
//! (as RabbitMQ numbers them), an ack settles exactly
//! its delivery, `multiple` settles every earlier delivery of the channel across shards,
//! a channel-wide prefetch counts every shard, and a closed channel returns everything.

#[path = "support/amqp.rs"]
mod amqp;
#[path = "support/amqp_exchange_helpers.rs"]
mod helpers;

use std::collections::BTreeMap;

use amqp::{AmqpBroker, next_delivery, within};
use broker::Config;
use helpers::{confirm_channel, durable_queue, no_args, publish_confirmed};
use lapin::BasicProperties;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicNackOptions, BasicQosOptions,
};

const SHARDS: usize = 4;
/// Enough queues that every shard holds some (placement is by a hash of the name).
const QUEUES: usize = 12;

fn sharded(config: &mut Config) {
    config.queue_shards = SHARDS;
}

fn queue(i: usize) -> String {
    format!("sharded-{i}")
}

/// Declares the queues, two messages in each (`{queue}/0`, `{queue}/1`).
async fn fill(conn: &lapin::Connection) {
    let ch = confirm_channel(conn).await;
    for i in 0..QUEUES {
        let name = queue(i);
        within(ch.queue_declare(name.as_str().into(), durable_queue(), no_args()))
            .await
            .unwrap();
        for n in 0..2 {
            let body = format!("{name}/{n}");
            let persistent = BasicProperties::default().with_delivery_mode(2);
            publish_confirmed(&ch, "", &name, body.as_bytes(), persistent).await;
        }
    }
}

/// (ready, unacked) of every queue, by name.
async fn counts(json: &broker::Client) -> BTreeMap<String, (u64, u64)> {
    let queues = json.list_queues().await.unwrap();
    let counts = queues.into_iter().map(|q| (q.queue, (q.ready, q.unacked)));
    counts
        .filter(|(name, _)| name.starts_with("sharded-"))
        .collect()
}

/// Returns once the broker has applied what `ch` sent before (acks have no reply; a
/// passive declare does, after them).
async fn applied(ch: &lapin::Channel) {
    let passive = lapin::options::QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    within(ch.queue_declare(queue(0).as_str().into(), passive, no_args()))
        .await
        .unwrap();
}

/// A consumer on every queue, on channel `ch`.
async fn consume_all(ch: &lapin::Channel) -> Vec<lapin::Consumer> {
    let mut consumers = Vec::new();
    for i in 0..QUEUES {
        let (name, tag) = (queue(i), format!("c{i}"));
        let options = BasicConsumeOptions::default();
        let consume = ch.basic_consume(
            name.as_str().into(),
            tag.as_str().into(),
            options,
            no_args(),
        );
        consumers.push(within(consume).await.unwrap());
    }
    consumers
}

/// The queue a delivery came from (its body names it).
fn source(delivery: &lapin::message::Delivery) -> String {
    let body = String::from_utf8(delivery.data.clone()).unwrap();
    body.split('/').next().unwrap().to_owned()
}

#[tokio::test]
async fn acks_find_their_shard_and_multiple_settles_across_shards() {
    let broker = AmqpBroker::start_with(sharded).await;
    let conn = broker.connect().await;
    fill(&conn).await;
    let json = broker.json_client().await;
    let ch = conn.create_channel().await.unwrap();
    let mut consumers = consume_all(&ch).await;
    // Every delivery of the channel, in the order the channel got them.
    let mut deliveries = Vec::new();
    for consumer in &mut consumers {
        for _ in 0..2 {
            deliveries.push(next_delivery(consumer).await);
        }
    }
    deliveries.sort_by_key(|d| d.delivery_tag);
    let tags: Vec<u64> = deliveries.iter().map(|d| d.delivery_tag).collect();
    let numbered: Vec<u64> = (1..=2 * QUEUES as u64).collect();
    assert_eq!(tags, numbered, "1, 2, 3, … across every shard");
    let all_unacked = counts(&json).await;
    assert!(
        all_unacked.values().all(|c| *c == (0, 2)),
        "{all_unacked:?}"
    );

    // A single ack settles its own delivery, whichever shard it is on.
    let first = deliveries.remove(0);
    within(first.acker.ack(BasicAckOptions::default()))
        .await
        .unwrap();
    // A nack with requeue puts one back in its own queue.
    let requeued = deliveries.remove(0);
    within(requeued.acker.nack(BasicNackOptions {
        requeue: true,
        ..Default::default()
    }))
    .await
    .unwrap();
    // `multiple` up to the middle tag: every earlier delivery, across shards.
    let middle = deliveries.len() / 2;
    let (settled, kept) = deliveries.split_at(middle + 1);
    let last = settled.last().unwrap();
    within(last.acker.ack(BasicAckOptions { multiple: true }))
        .await
        .unwrap();
    applied(&ch).await;

    let mut expected: BTreeMap<String, (u64, u64)> =
        (0..QUEUES).map(|i| (queue(i), (0, 0))).collect();
    for d in kept {
        expected.get_mut(&source(d)).unwrap().1 += 1;
    }
    // The requeued one went back, and its queue's consumer (prefetch unlimited) has it
    // again, unacked; the wait below sees it delivered.
    expected.get_mut(&source(&requeued)).unwrap().1 += 1;
    let redelivered = {
        let i = (0..QUEUES)
            .find(|i| queue(*i) == source(&requeued))
            .unwrap();
        next_delivery(&mut consumers[i]).await
    };
    assert!(redelivered.redelivered);
    assert_eq!(
        redelivered.delivery_tag,
        tags[tags.len() - 1] + 1,
        "the next tag"
    );
    assert_eq!(counts(&json).await, expected);

    // Closing the channel returns what it holds to each queue.
    ch.close(200, "done".into()).await.unwrap();
    let returned = within(async {
        loop {
            let now = counts(&json).await;
            if now.values().all(|(_, unacked)| *unacked == 0) {
                break now;
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
    for (name, (ready, _)) in &returned {
        assert_eq!(*ready, expected[name].1, "{name}: {returned:?}");
    }
}

#[tokio::test]
async fn a_channel_wide_prefetch_counts_every_shard() {
    let broker = AmqpBroker::start_with(sharded).await;
    let conn = broker.connect().await;
    fill(&conn).await;
    let json = broker.json_client().await;
    let ch = conn.create_channel().await.unwrap();
    within(ch.basic_qos(3, BasicQosOptions { global: true }))
        .await
        .unwrap();
    let _consumers = consume_all(&ch).await;
    // The queues are on different shards; the channel still holds 3 at most.
    let unacked: u64 = counts(&json).await.values().map(|(_, u)| u).sum();
    assert_eq!(unacked, 3);
    let ready: u64 = counts(&json).await.values().map(|(r, _)| r).sum();
    assert_eq!(ready, 2 * QUEUES as u64 - 3);
}

#[tokio::test]
async fn gets_and_a_restart_keep_each_queue_on_its_shard() {
    let dir = tempfile::tempdir().unwrap();
    let start = || amqp::start_in(dir.path(), sharded);
    let broker = start().await;
    let url = broker.amqp_addr().unwrap();
    let uri = format!("amqp://guest:guest@{url}/%2f");
    let conn = within(lapin::Connection::connect(&uri, Default::default()))
        .await
        .unwrap();
    fill(&conn).await;
    let ch = conn.create_channel().await.unwrap();
    // `basic.get` from every queue: tags grow across shards; ack them all with one
    // `multiple` but the last queue's.
    let mut gets = Vec::new();
    for i in 0..QUEUES {
        let get = ch.basic_get(queue(i).as_str().into(), BasicGetOptions { no_ack: false });
        gets.push(within(get).await.unwrap().expect("a message"));
    }
    let tags: Vec<u64> = gets.iter().map(|g| g.delivery.delivery_tag).collect();
    assert!(tags.windows(2).all(|w| w[0] < w[1]), "{tags:?}");
    let before_last = &gets[QUEUES - 2].delivery;
    within(before_last.acker.ack(BasicAckOptions { multiple: true }))
        .await
        .unwrap();
    conn.close(200, "done".into()).await.unwrap();
    broker.shutdown().await;

    // After a restart every queue is found again, with what it kept: one message each,
    // and two in the last (its get was never acked, so it came back).
    let broker = start().await;
    let json = broker::Client::connect(&broker.url()).await.unwrap();
    let after = counts(&json).await;
    let mut expected: BTreeMap<String, (u64, u64)> =
        (0..QUEUES).map(|i| (queue(i), (1, 0))).collect();
    expected.insert(queue(QUEUES - 1), (2, 0));
    assert_eq!(after, expected);
    for i in 0..QUEUES {
        json.queue_info(&queue(i)).await.unwrap();
    }
}
