//! `route` / `broker route`: where a message would go, without publishing it — the
//! exchange's type and the plugin version that decides, the matching bindings, the queues
//! — over the protocol and the CLI, in a vhost, with nothing enqueued.

mod common;

use broker::message::Headers;
use broker::protocol::{Binding, ErrorCode};
use broker::{Message, QueueOptions};
use common::{TestBroker, run_cli};

fn to(exchange: &str, key: &str) -> Message {
    let mut m = Message::text(key, "body");
    m.exchange = exchange.into();
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_shows_bindings_and_queues_without_publishing() {
    let b = TestBroker::start().await;
    let c = b.client().await;
    c.declare_exchange("events", "topic", false, Headers::new())
        .await
        .unwrap();
    for (queue, key) in [("orders", "order.*"), ("all", "#"), ("payments", "pay.*")] {
        c.declare_queue(queue, QueueOptions::default())
            .await
            .unwrap();
        c.bind(Binding {
            exchange: "events".into(),
            queue: queue.into(),
            key: key.into(),
            arguments: Headers::new(),
        })
        .await
        .unwrap();
    }

    let answer = c.route(to("events", "order.created")).await.unwrap();
    assert_eq!(answer["exchange"], "events");
    assert_eq!(answer["type"], "topic");
    assert!(answer["plugin_version"].as_u64().is_some(), "{answer}");
    let mut queues: Vec<&str> = answer["queues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q.as_str().unwrap())
        .collect();
    queues.sort();
    assert_eq!(queues, ["all", "orders"]);
    let keys: Vec<&str> = answer["bindings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys.len(), 2, "{answer}");
    assert!(keys.contains(&"order.*") && keys.contains(&"#"));

    // The default exchange: the queue named by the key, or none.
    let answer = c.route(Message::text("orders", "x")).await.unwrap();
    assert_eq!(
        (answer["type"].as_str(), &answer["queues"]),
        (Some("default"), &serde_json::json!(["orders"]))
    );
    let answer = c.route(Message::text("missing", "x")).await.unwrap();
    assert_eq!(answer["queues"], serde_json::json!([]));

    let err = c.route(to("nowhere", "k")).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::ExchangeNotFound));

    // Nothing was published.
    for queue in ["orders", "all", "payments"] {
        let info = c.queue_info(queue).await.unwrap();
        assert_eq!((info.ready, info.published), (0, 0), "{queue}");
    }

    // The CLI says the same in words.
    let (ok, out, err) = run_cli(
        &[
            "route",
            "--exchange",
            "events",
            "--routing-key",
            "pay.refund",
        ],
        &b.url(),
    );
    assert!(ok, "{err}");
    assert!(out.contains("routed by plugin `topic` version"), "{out}");
    assert!(out.contains("pay.* -> payments"), "{out}");
    assert!(
        out.contains("queues: all, payments") || out.contains("queues: payments, all"),
        "{out}"
    );
    let (ok, out, _) = run_cli(
        &[
            "route",
            "--exchange",
            "events",
            "--routing-key",
            "x",
            "--json",
        ],
        &b.url(),
    );
    assert!(ok);
    let answer: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(answer["queues"], serde_json::json!(["all"]));
}
