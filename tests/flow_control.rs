//! Flow control: nothing a client does grows the broker's memory without bound. A
//! publisher past its unconfirmed limit is not read, a consumer that stops reading gets
//! no more deliveries, and past the memory watermark publishers are blocked (and told).

mod common;

use std::time::Duration;

use broker::protocol::Subscribe;
use broker::{Broker, Client, Config, Message, QueueOptions};
use common::{BrokerProcess, WAIT, wait_for};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message as WsMessage;

async fn start_with(dir: &std::path::Path, tune: impl FnOnce(&mut Config)) -> Broker {
    let mut config = Config::new(dir);
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.max_frame_bytes = common::FRAME_LIMIT;
    tune(&mut config);
    Broker::start(config).await.unwrap()
}

async fn ready(client: &Client, queue: &str) -> u64 {
    client.queue_info(queue).await.unwrap().ready
}

#[tokio::test]
async fn a_publisher_past_its_unconfirmed_limit_is_not_read_until_confirms_go_out() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_with(dir.path(), |c| c.max_unconfirmed = 5).await;
    let observer = Client::connect(&broker.url()).await.unwrap();
    observer
        .declare_queue("held", QueueOptions::durable())
        .await
        .unwrap();
    let publisher = Client::connect(&broker.url()).await.unwrap();
    publisher.confirm_select().await.unwrap();

    // A disk that stalls: nothing is confirmed, so credit does not come back.
    broker.hold_commits(true);
    let confirms: Vec<_> = (0..50)
        .map(|i| publisher.publish(common::persistent("held", &i.to_string()), false))
        .collect();
    wait_for(|| async { (ready(&observer, "held").await == 5).then_some(()) }).await;
    // Another round trip through the router: still only the first five were read.
    assert_eq!(ready(&observer, "held").await, 5);
    assert_eq!(ready(&observer, "held").await, 5);

    broker.hold_commits(false);
    for confirm in confirms {
        tokio::time::timeout(WAIT, confirm)
            .await
            .expect("confirmed in time")
            .unwrap();
    }
    assert_eq!(ready(&observer, "held").await, 50);
}

#[tokio::test]
async fn a_consumer_that_stops_reading_gets_no_more_deliveries_until_it_drains() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_with(dir.path(), |_| {}).await;
    let client = Client::connect(&broker.url()).await.unwrap();
    client
        .declare_queue("firehose", QueueOptions::default())
        .await
        .unwrap();
    let (mut ws, _) = tokio_tungstenite::connect_async(common::upgrade_request(&broker.url()))
        .await
        .unwrap();
    let subscribe = json!({"id": 1, "op": "subscribe", "queue": "firehose", "prefetch": 0});
    ws.send(WsMessage::Text(subscribe.to_string().into()))
        .await
        .unwrap();
    // 32 MiB of messages: far more than the outbound limit plus the sockets' buffers.
    const COUNT: usize = 1000;
    let body = "x".repeat(32 * 1024);
    client.confirm_select().await.unwrap();
    let confirms: Vec<_> = (0..COUNT)
        .map(|_| client.publish(Message::text("firehose", body.clone()), false))
        .collect();
    for confirm in confirms {
        confirm.await.unwrap();
    }
    // The consumer reads nothing: the broker holds the rest back, ready.
    let info = client.queue_info("firehose").await.unwrap();
    assert!(info.ready > 0, "{info:?}");
    assert_eq!(info.ready + info.unacked, COUNT as u64);

    // Once it reads, everything arrives.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut delivered = 0;
    while delivered < COUNT {
        let frame = tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("every message delivered in time")
            .unwrap()
            .unwrap();
        if let WsMessage::Text(text) = frame {
            let value: serde_json::Value = serde_json::from_str(&text).unwrap();
            if value["type"] == "deliver" {
                delivered += 1;
            }
        }
    }
}

/// Resident memory of a process, from /proc.
fn resident_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        * 1024
}

#[tokio::test]
async fn a_flood_blocks_publishers_at_the_memory_watermark_and_nothing_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    // The broker's own footprint first, then a watermark 48 MiB above it.
    let baseline = {
        let process = BrokerProcess::spawn(dir.path());
        let client = Client::connect(&process.url).await.unwrap();
        client.list_queues().await.unwrap();
        resident_bytes(process.child.id())
    };
    let watermark = baseline + (48 << 20);
    let process = BrokerProcess::spawn_with(
        dir.path(),
        &["--memory-high-watermark", &watermark.to_string()],
    );
    let publisher = Client::connect(&process.url).await.unwrap();
    publisher
        .declare_queue("flood", QueueOptions::default())
        .await
        .unwrap();
    let mut blocked = publisher.blocked();

    // Publish without confirms until the broker says `blocked` (or 128 MiB were sent).
    let body = "f".repeat(64 * 1024);
    let mut published = 0u64;
    while blocked.borrow().is_none() && published < 2000 {
        for _ in 0..50 {
            drop(publisher.publish(Message::text("flood", body.clone()), false));
            published += 1;
        }
        tokio::task::yield_now().await;
    }
    tokio::time::timeout(WAIT, blocked.wait_for(|b| b.is_some()))
        .await
        .expect("the publisher is told it is blocked")
        .unwrap();
    let resident = resident_bytes(process.child.id());
    assert!(
        resident <= watermark + (64 << 20),
        "resident {resident} over watermark {watermark} + 64 MiB"
    );

    // A consumer drains the queue: memory falls, the publisher is unblocked, and every
    // message it published arrives.
    let consumer = Client::connect(&process.url).await.unwrap();
    let mut sub = consumer
        .subscribe(Subscribe {
            queue: "flood".into(),
            prefetch: 0,
            auto_ack: true,
            consumer_tag: None,
            filter: None,
            exclusive: false,
            priority: 0,
            consumer_timeout_ms: None,
        })
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    for _ in 0..published {
        tokio::time::timeout_at(deadline, sub.next())
            .await
            .expect("every published message arrives in time")
            .expect("subscription open");
    }
    tokio::time::timeout_at(deadline, blocked.wait_for(|b| b.is_none()))
        .await
        .expect("the publisher is unblocked")
        .unwrap();
}
