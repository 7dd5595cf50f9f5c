//! Prometheus metrics end to end: what a real broker counts after real traffic, scraped
//! over real HTTP and checked by a strict parser of the text format.

mod common;
#[path = "support/hostile.rs"]
mod hostile;
#[path = "support/prometheus.rs"]
mod prometheus;

use broker::protocol::Binding;
use broker::{Client, QueueOptions};
use common::*;
use prometheus::{parse_prometheus, value};

#[tokio::test]
async fn metrics_count_what_happened_in_prometheus_format() {
    let b = HttpBroker::start().await;
    let c = b.client().await;
    c.confirm_select().await.unwrap();
    c.declare_queue("work", QueueOptions::durable())
        .await
        .unwrap();
    c.declare_exchange("events", "topic", false, Default::default())
        .await
        .unwrap();
    c.bind(Binding {
        exchange: "events".into(),
        queue: "work".into(),
        key: "job.*".into(),
        arguments: Default::default(),
    })
    .await
    .unwrap();
    for _ in 0..4 {
        c.publish(persistent("work", "x"), false).await.unwrap();
    }
    let mut routed = persistent("job.new", "y");
    routed.exchange = "events".into();
    c.publish(routed, false).await.unwrap();
    let mut lost = persistent("nobody.listens", "z");
    lost.exchange = "events".into();
    c.publish(lost, false).await.unwrap();

    // Ack three, reject one back (redelivered later), reject one to the DLQ.
    let mut sub = c.consume("work", 10).await.unwrap();
    let mut tags = Vec::new();
    for _ in 0..5 {
        tags.push(next(&mut sub).await.delivery_tag);
    }
    for tag in &tags[..3] {
        c.ack(*tag, false).unwrap();
    }
    c.nack(tags[3], false, true).unwrap();
    c.reject(tags[4], false).unwrap();
    let again = next(&mut sub).await;
    assert!(again.redelivered);
    c.ack(again.delivery_tag, false).unwrap();

    // A trapping plugin counts as a plugin failure.
    c.queue_info("work").await.unwrap(); // a round trip: the acks above are applied

    let scrape = wait_for(|| async {
        let reply = b.get("/metrics").await;
        assert_eq!(reply.status, 200);
        assert!(
            reply
                .header("content-type")
                .unwrap()
                .starts_with("text/plain; version=0.0.4")
        );
        let samples = parse_prometheus(&reply.body);
        (value(&samples, "broker_queue_acked_total", &[("queue", "work")]) == 4.0)
            .then_some(samples)
    })
    .await;
    let q = |name: &str| value(&scrape, name, &[("queue", "work")]);
    assert_eq!(q("broker_queue_published_total"), 5.0);
    assert_eq!(q("broker_queue_delivered_total"), 6.0);
    assert_eq!(q("broker_queue_redelivered_total"), 1.0);
    assert_eq!(q("broker_queue_dead_lettered_total"), 1.0);
    assert_eq!(q("broker_queue_messages_ready"), 0.0);
    assert_eq!(q("broker_queue_messages_unacked"), 0.0);
    assert_eq!(q("broker_queue_consumers"), 1.0);
    assert_eq!(
        value(
            &scrape,
            "broker_queue_messages_ready",
            &[("queue", "work.dlq")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &scrape,
            "broker_queue_published_total",
            &[("queue", "work.dlq")]
        ),
        1.0
    );
    let x = |name: &str, exchange: &str| value(&scrape, name, &[("exchange", exchange)]);
    assert_eq!(x("broker_exchange_routed_total", ""), 4.0);
    assert_eq!(x("broker_exchange_routed_total", "events"), 1.0);
    assert_eq!(x("broker_exchange_unroutable_total", "events"), 1.0);
    assert_eq!(x("broker_exchange_bindings", "events"), 1.0);
    assert!(value(&scrape, "broker_plugin_calls_total", &[("plugin", "topic")]) >= 2.0);
    assert_eq!(
        value(
            &scrape,
            "broker_plugin_errors_total",
            &[("plugin", "topic")]
        ),
        0.0
    );
    let topic = [("plugin", "topic"), ("version", "0")];
    assert_eq!(value(&scrape, "broker_plugin_messages_total", &topic), 2.0);
    let calls = value(&scrape, "broker_plugin_calls_total", &topic);
    assert_eq!(
        value(&scrape, "broker_plugin_call_duration_seconds_count", &topic),
        calls
    );
    assert!(value(&scrape, "broker_plugin_call_duration_seconds_sum", &topic) > 0.0);
    assert_eq!(value(&scrape, "broker_connections", &[]), 1.0);
    assert!(value(&scrape, "broker_resident_memory_bytes", &[]) > 1e6);
    let commits = value(&scrape, "broker_store_commits_total", &[]);
    assert!(commits >= 3.0, "{commits}");
    assert_eq!(
        value(&scrape, "broker_store_commit_seconds_count", &[]),
        commits
    );
    assert_eq!(
        value(&scrape, "broker_store_commit_batch_ops_count", &[]),
        commits
    );
    assert!(value(&scrape, "broker_store_commit_batch_ops_sum", &[]) >= commits);
    b.broker.shutdown().await;
}

/// Plugin failures show up per plugin: a trap is an error and a trap.
#[tokio::test]
async fn metrics_count_plugin_traps() {
    let plugins = tempfile::tempdir().unwrap();
    std::fs::write(plugins.path().join("keyed.wasm"), hostile::plugin("trap")).unwrap();
    let data = tempfile::tempdir().unwrap();
    let mut config = broker::Config::new(data.path());
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.http = Some("127.0.0.1:0".parse().unwrap());
    config.plugins_dir = Some(plugins.path().to_owned());
    let b = broker::Broker::start(config).await.unwrap();
    let c = Client::connect(&b.url()).await.unwrap();
    c.confirm_select().await.unwrap();
    c.declare_exchange("custom", "keyed", false, Default::default())
        .await
        .unwrap();
    let mut boom = broker::Message::text("boom", "x");
    boom.exchange = "custom".into();
    let err = c.publish(boom, false).await.unwrap_err();
    assert_eq!(err.code(), Some(broker::protocol::ErrorCode::PluginError));
    let text = http(b.http_addr().unwrap(), "GET", "/metrics", None)
        .await
        .body;
    let samples = parse_prometheus(&text);
    // The plugins directory deployed the file as version 1.
    let p = |name: &str| value(&samples, name, &[("plugin", "keyed"), ("version", "1")]);
    assert_eq!(p("broker_plugin_traps_total"), 1.0);
    assert_eq!(p("broker_plugin_messages_total"), 1.0);
    assert_eq!(p("broker_plugin_errors_total"), 1.0);
    assert_eq!(
        value(
            &samples,
            "broker_exchange_failed_total",
            &[("exchange", "custom")]
        ),
        1.0
    );
    b.shutdown().await;
}
