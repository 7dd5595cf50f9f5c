//! Shard threads (`broker serve --queue-shards N --shard-threads`): each queue shard on a
//! thread of its own, and each client connection's tasks moved, socket and all, to the
//! thread of the shard whose queue it first consumes from (or, before any consume, first
//! publishes to). A client sees nothing of it but the `thread` in `list_connections`:
//! its traffic carries on across the move, on every protocol.

mod common;

use std::collections::BTreeMap;

use broker::protocol::ConnectionInfo;
use broker::{Broker, Client, Config, QueueOptions};
use common::{WAIT, persistent};

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
