//! Shard threads (`broker serve --queue-shards N --shard-threads`): each queue shard on a
//! thread of its own, and each client connection's tasks moved, socket and all, to the
//! thread of the shard whose queue it first consumes from (or, before any consume, first
//! publishes to). A client sees nothing of it but the `thread` in `list_connections`:
//! its traffic carries on across the move, on every protocol.

#[path = "support/amqp.rs"]
mod amqp;
mod common;
#[path = "support/amqp_exchange_helpers.rs"]
mod helpers;
#[path = "support/stomp.rs"]
mod stomp;

use std::collections::BTreeMap;

use amqp::{AmqpBroker, next_delivery, within};
use broker::protocol::{ConnectionInfo, WireProtocol};
use broker::{Broker, Client, Config, QueueOptions};
use common::{WAIT, persistent};
use helpers::{confirm_channel, no_args, publish_confirmed};
use lapin::BasicProperties;
use lapin::options::{BasicAckOptions, BasicConsumeOptions};

const SHARDS: usize = 2;
const MESSAGES: usize = 200;

fn threaded(config: &mut Config) {
    config.queue_shards = SHARDS;
    config.shard_threads = true;
}

async fn start(dir: &std::path::Path) -> Broker {
    let mut config = Config::new(dir);
    config.listen = "127.0.0.1:0".parse().unwrap();
    threaded(&mut config);
    Broker::start(config).await.unwrap()
}

/// A durable queue on each shard, by index (queues are placed by a hash of their name
/// with a per-run seed, so names are tried until every shard has one).
async fn queue_per_shard(client: &Client, prefix: &str) -> Vec<String> {
    let mut found: BTreeMap<u64, String> = BTreeMap::new();
    for i in 0..64 {
        let name = format!("{prefix}-{i}");
        let info = client
            .declare_queue(&name, QueueOptions::durable())
            .await
            .unwrap();
        let on = client.queue_info(&name).await.unwrap().shard;
        assert_eq!(on, info.shard, "a queue stays on its shard");
        found.entry(on).or_insert(name);
        if found.len() == SHARDS {
            return found.into_values().collect();
        }
    }
    panic!("64 queues all on {found:?}");
}

/// Every client connection's row.
async fn rows(client: &Client) -> Vec<ConnectionInfo> {
    client.list_connections().await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn consumers_move_to_their_queues_thread_and_their_traffic_carries_on() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path()).await;
    let admin = Client::connect(&broker.url()).await.unwrap();
    let queues = queue_per_shard(&admin, "moving").await;
    // Two consumers per queue, opened one after the other: connections start on the
    // thread of shard `id % 2`, so of each two, one starts away from its queue.
    let mut consumers = Vec::new();
    for queue in queues.iter().flat_map(|q| [q, q]) {
        consumers.push((queue.clone(), Client::connect(&broker.url()).await.unwrap()));
    }
    let started: Vec<Option<u64>> = rows(&admin).await.iter().map(|r| r.thread).collect();
    for shard in 0..SHARDS as u64 {
        assert!(started.contains(&Some(shard)), "{started:?}");
    }
    let mut subscriptions = Vec::new();
    for (queue, client) in &consumers {
        subscriptions.push(client.consume(queue, 50).await.unwrap());
    }
    let shard_of: BTreeMap<String, u64> = (admin.list_queues().await.unwrap())
        .into_iter()
        .map(|q| (q.queue, q.shard))
        .collect();
    for row in rows(&admin).await {
        if let [consumer] = &row.consumers[..] {
            assert_eq!(row.thread, Some(shard_of[&consumer.queue]), "{row:?}");
        }
    }

    // A publisher is placed by its first publish, to the first queue's shard.
    let publisher = Client::connect(&broker.url()).await.unwrap();
    publisher.confirm_select().await.unwrap();
    let mut confirms = Vec::new();
    for n in 0..MESSAGES {
        for queue in &queues {
            let message = persistent(queue, &format!("{n}"));
            confirms.push(publisher.publish(message, false));
        }
    }
    for confirm in confirms {
        tokio::time::timeout(WAIT, confirm).await.unwrap().unwrap();
    }
    let publisher_row = (rows(&admin).await.into_iter())
        .find(|r| r.consumers.is_empty() && r.confirms)
        .expect("the publisher's row");
    assert_eq!(publisher_row.thread, Some(shard_of[&queues[0]]));

    // Every message reaches one of its queue's two consumers and is acked from there.
    let mut received = BTreeMap::<String, usize>::new();
    let total = MESSAGES * queues.len();
    for _ in 0..total {
        let nexts = subscriptions.iter_mut().map(|s| Box::pin(s.next()));
        let any = futures_util::future::select_all(nexts);
        let (delivery, i, _) = tokio::time::timeout(WAIT, any).await.expect("a delivery");
        let delivery = delivery.expect("subscription open");
        consumers[i].1.ack(delivery.delivery_tag, false).unwrap();
        *received.entry(delivery.queue.to_string()).or_default() += 1;
    }
    for queue in &queues {
        assert_eq!(received[queue], MESSAGES, "{received:?}");
    }
    // A request after a connection's acks is answered after them.
    for (queue, client) in &consumers {
        client.queue_info(queue).await.unwrap();
    }
    let infos = admin.list_queues().await.unwrap();
    assert!(
        infos.iter().all(|q| q.ready == 0 && q.unacked == 0),
        "{infos:?}"
    );
    let acked: u64 = infos.iter().map(|q| q.acked).sum();
    assert_eq!(acked, total as u64);
    drop(subscriptions);
    for (_, client) in consumers {
        client.close().await;
    }
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_amqp_connection_moves_with_its_channels_to_the_queue_it_consumes_from() {
    let broker = AmqpBroker::start_with(threaded).await;
    let json = broker.json_client().await;
    let queues = queue_per_shard(&json, "amqp-moving").await;
    let conn = broker.connect().await;
    let newest_amqp = |rows: Vec<ConnectionInfo>| {
        (rows.into_iter())
            .filter(|r| r.protocol == WireProtocol::Amqp)
            .max_by_key(|r| r.conn)
            .expect("the AMQP connection's row")
    };
    let started = newest_amqp(rows(&json).await).thread.expect("a thread");
    // The queue on the other shard: the connection has to move to consume from it.
    let other = 1 - started as usize;
    let queue = queues[other].as_str();
    let publishing = confirm_channel(&conn).await;
    let consuming = conn.create_channel().await.unwrap();
    let options = BasicConsumeOptions::default();
    let consume = consuming.basic_consume(queue.into(), "c".into(), options, no_args());
    let mut consumer = within(consume).await.unwrap();
    assert_eq!(newest_amqp(rows(&json).await).thread, Some(other as u64));
    for n in 0..MESSAGES {
        let body = format!("{n}");
        let persistent = BasicProperties::default().with_delivery_mode(2);
        publish_confirmed(&publishing, "", queue, body.as_bytes(), persistent).await;
        let delivery = next_delivery(&mut consumer).await;
        assert_eq!(delivery.data, body.as_bytes());
        within(delivery.ack(BasicAckOptions::default()))
            .await
            .unwrap();
    }
    // A passive declare on the consuming channel is answered after its acks.
    let passive = lapin::options::QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    within(consuming.queue_declare(queue.into(), passive, no_args()))
        .await
        .unwrap();
    let info = json.queue_info(queue).await.unwrap();
    assert_eq!(
        (info.ready, info.unacked, info.acked),
        (0, 0, MESSAGES as u64)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn stomp_connections_keep_working_across_the_move_over_tcp_and_websocket() {
    let b = stomp::StompBroker::start_with(threaded).await;
    let client = b.client().await;
    let on_shard_0: Vec<String> = (0..64)
        .map(|i| format!("stomp-moving-{i}"))
        .collect::<Vec<_>>();
    let mut chosen = Vec::new();
    for name in on_shard_0 {
        let info = client
            .declare_queue(&name, QueueOptions::durable())
            .await
            .unwrap();
        if info.shard == 0 {
            chosen.push(name);
        }
        if chosen.len() == 4 {
            break;
        }
    }
    assert_eq!(chosen.len(), 4, "4 of 64 queues on shard 0");
    // Two connections one after the other per transport: one of them starts on shard
    // 1's thread (`id % 2`) and moves to shard 0's at its subscribe.
    let transports = ["tcp", "tcp", "ws", "ws"];
    for (transport, queue) in transports.into_iter().zip(&chosen) {
        let got = stomp::scenario("roundtrip", transport, b.port(transport), &[queue]).await;
        assert_eq!(got["message"]["body"], "hello stomp", "{got}");
        let info = client.queue_info(queue).await.unwrap();
        assert_eq!((info.ready, info.unacked, info.acked), (0, 0, 1), "{queue}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_consume_right_after_a_reject_finds_the_dlq_the_reject_made_on_another_shard() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path()).await;
    let client = Client::connect(&broker.url()).await.unwrap();
    client.confirm_select().await.unwrap();
    // A `.dlq` is made, on first use, on the shard its name hashes to: of 32 queues some
    // dead-letter to the other shard (all on one: a chance of 2 in 2^32).
    let mut across = 0;
    for i in 0..32 {
        let queue = format!("rejecting-{i}");
        client
            .declare_queue(&queue, QueueOptions::durable())
            .await
            .unwrap();
        client
            .publish(persistent(&queue, "x"), false)
            .await
            .unwrap();
        let mut sub = client.consume(&queue, 1).await.unwrap();
        let delivery = common::next(&mut sub).await;
        // The reject makes `.dlq` on its shard; the consume, sent right after it to
        // that shard, must find it, as it would with one shard.
        client.reject(delivery.delivery_tag, false).unwrap();
        let dlq = format!("{queue}.dlq");
        let mut dead_letters = client.consume(&dlq, 1).await.unwrap();
        let dead = common::next(&mut dead_letters).await;
        assert_eq!(common::body(&dead), "x");
        let queue_shard = client.queue_info(&queue).await.unwrap().shard;
        let dlq_shard = client.queue_info(&dlq).await.unwrap().shard;
        if queue_shard != dlq_shard {
            across += 1;
        }
    }
    assert!(across > 0, "no queue dead-lettered to another shard");
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn queues_are_spread_evenly_over_the_shards_when_declared_and_when_recovered() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path()).await;
    let client = Client::connect(&broker.url()).await.unwrap();
    let per_shard = |infos: Vec<broker::protocol::QueueInfo>| {
        let mut counts = vec![0; SHARDS];
        infos.iter().for_each(|q| counts[q.shard as usize] += 1);
        counts
    };
    for i in 0..8 {
        let name = format!("spread-{i}");
        client
            .declare_queue(&name, QueueOptions::durable())
            .await
            .unwrap();
    }
    assert_eq!(per_shard(client.list_queues().await.unwrap()), [4, 4]);
    // Deleting two of shard 0's: the next two declared go there.
    let infos = client.list_queues().await.unwrap();
    let on_0: Vec<&str> = (infos.iter().filter(|q| q.shard == 0))
        .map(|q| q.queue.as_str())
        .collect();
    for name in &on_0[..2] {
        client.delete_queue(name).await.unwrap();
    }
    for name in ["spread-8", "spread-9"] {
        let info = client
            .declare_queue(name, QueueOptions::durable())
            .await
            .unwrap();
        assert_eq!(info.shard, 0, "{name}");
    }
    client.close().await;
    broker.shutdown().await;
    let broker = start(dir.path()).await;
    let client = Client::connect(&broker.url()).await.unwrap();
    assert_eq!(per_shard(client.list_queues().await.unwrap()), [4, 4]);
    broker.shutdown().await;
}
