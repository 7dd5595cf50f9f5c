//! Durability: restarts, `kill -9` of the real broker binary, graceful shutdown.

mod common;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use broker::{Client, Message, QueueOptions};
use common::{BrokerProcess, TestBroker, assert_quiet, body, next, persistent};

#[tokio::test]
async fn restart_keeps_durable_state_and_drops_transient() {
    let mut b = TestBroker::start().await;
    let c = b.client().await;
    c.declare_queue("durable", QueueOptions::durable())
        .await
        .unwrap();
    c.declare_queue("temp", QueueOptions::default())
        .await
        .unwrap();
    c.confirm_select().await.unwrap();
    c.publish(persistent("durable", "kept"), false)
        .await
        .unwrap();
    c.publish(Message::text("durable", "transient"), false)
        .await
        .unwrap();
    c.publish(persistent("temp", "on a transient queue"), false)
        .await
        .unwrap();
    c.close().await;
    b.restart().await;

    let c = b.client().await;
    let names = common::queue_names(&c).await;
    assert_eq!(names, ["durable"]);
    let mut sub = c.consume("durable", 10).await.unwrap();
    assert_eq!(body(&next(&mut sub).await), "kept");
    assert_quiet(&mut sub).await;
}

#[tokio::test]
async fn acked_messages_never_come_back_and_requeue_counts_persist() {
    let mut b = TestBroker::start().await;
    let c = b.client().await;
    c.declare_queue("q", QueueOptions::durable()).await.unwrap();
    c.confirm_select().await.unwrap();
    for t in ["acked", "nacked", "untouched"] {
        c.publish(persistent("q", t), false).await.unwrap();
    }
    let mut sub = c.consume("q", 2).await.unwrap();
    let acked = next(&mut sub).await;
    let nacked = next(&mut sub).await;
    // The nack first: it frees the one place the requeued message is redelivered into
    // (an ack first could let `untouched` in ahead of it).
    c.nack(nacked.delivery_tag, false, true).unwrap();
    c.ack(acked.delivery_tag, false).unwrap();
    let redelivered = next(&mut sub).await;
    assert_eq!(body(&redelivered), "nacked");
    c.close().await;
    // Restart only once the broker has seen the disconnect (which counts the held
    // delivery); a shutdown first would release it uncounted.
    let observer = b.client().await;
    common::wait_for(|| async {
        (observer.queue_info("q").await.unwrap().unacked == 0).then_some(())
    })
    .await;
    observer.close().await;
    b.restart().await;

    let c = b.client().await;
    let mut sub = c.consume("q", 10).await.unwrap();
    let first = next(&mut sub).await;
    assert_eq!(body(&first), "nacked");
    // Delivered twice before the restart (nacked once, then held at disconnect): both
    // requeues' counts were stored, so this is its third delivery.
    assert_eq!(
        first.delivery_count, 3,
        "delivery counts survive the restart"
    );
    assert!(first.redelivered);
    assert_eq!(body(&next(&mut sub).await), "untouched");
    assert_quiet(&mut sub).await;
}

/// Publishes persistent messages as fast as confirms allow while the broker process is
/// killed with SIGKILL; every confirmed message must be there after a restart, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_publish_loses_no_confirmed_message() {
    let dir = tempfile::tempdir().unwrap();
    let process = BrokerProcess::spawn(dir.path());
    let client = Client::connect(&process.url).await.unwrap();
    client
        .declare_queue("orders", QueueOptions::durable())
        .await
        .unwrap();
    client.confirm_select().await.unwrap();

    let confirmed = Arc::new(Mutex::new(Vec::new()));
    let publisher = {
        let confirmed = confirmed.clone();
        tokio::spawn(async move {
            let mut in_flight = std::collections::VecDeque::new();
            for i in 0u64.. {
                in_flight.push_back((
                    i,
                    client.publish(persistent("orders", &i.to_string()), false),
                ));
                if in_flight.len() >= 200 {
                    let (i, confirm) = in_flight.pop_front().unwrap();
                    if confirm.await.is_err() {
                        return;
                    }
                    confirmed.lock().unwrap().push(i);
                }
            }
        })
    };
    // Let a few thousand confirms through, then kill the broker mid-stream.
    common::wait_for(|| async { (confirmed.lock().unwrap().len() >= 3000).then_some(()) }).await;
    process.kill9();
    publisher.await.unwrap();
    let confirmed: Vec<u64> = confirmed.lock().unwrap().clone();

    let process = BrokerProcess::spawn(dir.path());
    let client = Client::connect(&process.url).await.unwrap();
    let stored = client.queue_info("orders").await.unwrap().ready;
    let mut sub = client.consume("orders", 0).await.unwrap();
    let mut seen = HashSet::new();
    for _ in 0..stored {
        let d = next(&mut sub).await;
        assert!(seen.insert(body(&d)), "no message stored twice");
    }
    let missing: Vec<_> = confirmed
        .iter()
        .filter(|i| !seen.contains(&i.to_string()))
        .collect();
    assert!(
        missing.is_empty(),
        "{} confirmed messages lost, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    assert!(stored as usize >= confirmed.len());
}

/// Unacked deliveries at a crash come back; acks followed by a confirmed publish don't.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_redelivers_unacked_but_not_acked() {
    let dir = tempfile::tempdir().unwrap();
    let process = BrokerProcess::spawn(dir.path());
    let c = Client::connect(&process.url).await.unwrap();
    c.declare_queue("jobs", QueueOptions::durable())
        .await
        .unwrap();
    c.confirm_select().await.unwrap();
    for i in 0..10 {
        c.publish(persistent("jobs", &i.to_string()), false)
            .await
            .unwrap();
    }
    let mut sub = c.consume("jobs", 10).await.unwrap();
    let mut got = Vec::new();
    for _ in 0..10 {
        got.push(next(&mut sub).await);
    }
    for d in &got[..4] {
        c.ack(d.delivery_tag, false).unwrap();
    }
    // Commits are ordered: once this confirm arrives, the earlier acks are durable too.
    c.publish(persistent("jobs", "barrier"), false)
        .await
        .unwrap();
    process.kill9();

    let process = BrokerProcess::spawn(dir.path());
    let c = Client::connect(&process.url).await.unwrap();
    let mut sub = c.consume("jobs", 0).await.unwrap();
    let mut bodies = Vec::new();
    for _ in 0..7 {
        bodies.push(body(&next(&mut sub).await));
    }
    assert_eq!(bodies, ["4", "5", "6", "7", "8", "9", "barrier"]);
    assert_quiet(&mut sub).await;
}

#[tokio::test]
async fn sigterm_shuts_down_gracefully() {
    let dir = tempfile::tempdir().unwrap();
    let mut process = BrokerProcess::spawn(dir.path());
    let c = Client::connect(&process.url).await.unwrap();
    c.declare_queue("q", QueueOptions::durable()).await.unwrap();
    c.confirm_select().await.unwrap();
    c.publish(persistent("q", "survives"), false).await.unwrap();
    let pid = process.child.id().to_string();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = process.child.wait().unwrap();
    assert!(exit.success(), "clean exit on SIGTERM: {exit:?}");

    let process = BrokerProcess::spawn(dir.path());
    let c = Client::connect(&process.url).await.unwrap();
    let mut sub = c.consume("q", 1).await.unwrap();
    assert_eq!(body(&next(&mut sub).await), "survives");
}
