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

/// One bundled exchange type's setup for [`route_matches_publishing_for_every_bundled_type`]:
/// its exchange arguments, (queue, binding key, binding arguments), and messages as
/// (routing key, headers, body).
struct TypeCase {
    kind: &'static str,
    arguments: serde_json::Value,
    bindings: Vec<(&'static str, &'static str, serde_json::Value)>,
    messages: Vec<(&'static str, serde_json::Value, &'static str)>,
}

fn object(value: serde_json::Value) -> Headers {
    match value {
        serde_json::Value::Object(map) => map,
        serde_json::Value::Null => Headers::new(),
        other => panic!("not an object: {other}"),
    }
}

fn type_cases() -> Vec<TypeCase> {
    use serde_json::json;
    let none = serde_json::Value::Null;
    vec![
        TypeCase {
            kind: "direct",
            arguments: none.clone(),
            bindings: vec![("a", "k1", none.clone()), ("b", "k2", none.clone())],
            messages: vec![
                ("k1", none.clone(), "x"),
                ("k2", none.clone(), "x"),
                ("k3", none.clone(), "x"),
            ],
        },
        TypeCase {
            kind: "topic",
            arguments: none.clone(),
            bindings: vec![
                ("a", "order.*", none.clone()),
                ("b", "#", none.clone()),
                ("c", "pay.#", none.clone()),
            ],
            messages: vec![
                ("order.new", none.clone(), "x"),
                ("pay.card.ok", none.clone(), "x"),
                ("other", none.clone(), "x"),
            ],
        },
        TypeCase {
            kind: "fanout",
            arguments: none.clone(),
            bindings: vec![("a", "", none.clone()), ("b", "", none.clone())],
            messages: vec![("anything", none.clone(), "x")],
        },
        TypeCase {
            kind: "headers",
            arguments: none.clone(),
            bindings: vec![
                (
                    "a",
                    "",
                    json!({"x-match": "all", "kind": "order", "region": "eu"}),
                ),
                (
                    "b",
                    "",
                    json!({"x-match": "any", "kind": "order", "region": "us"}),
                ),
            ],
            messages: vec![
                ("", json!({"kind": "order", "region": "eu"}), "x"),
                ("", json!({"kind": "invoice", "region": "us"}), "x"),
                ("", json!({"kind": "invoice"}), "x"),
            ],
        },
        TypeCase {
            kind: "consistent-hash",
            arguments: none.clone(),
            bindings: vec![
                ("a", "1", none.clone()),
                ("b", "2", none.clone()),
                ("c", "1", none.clone()),
            ],
            messages: vec![
                ("customer-1", none.clone(), "x"),
                ("customer-2", none.clone(), "x"),
                ("customer-3", none.clone(), "x"),
                ("customer-4", none.clone(), "x"),
            ],
        },
        TypeCase {
            kind: "json-router",
            arguments: none.clone(),
            bindings: vec![
                ("a", "", json!({"match": "amount > 100"})),
                ("b", "", json!({"match": "country == \"DE\""})),
            ],
            messages: vec![
                ("", none.clone(), r#"{"amount": 250, "country": "DE"}"#),
                ("", none.clone(), r#"{"amount": 5, "country": "DE"}"#),
                ("", none.clone(), r#"{"amount": 5}"#),
                ("", none.clone(), "not json"),
            ],
        },
        TypeCase {
            kind: "schema-gate",
            arguments: json!({"schema": {"type": "object", "required": ["id"]}}),
            bindings: vec![
                ("a", "payment", none.clone()),
                ("b", "#invalid", none.clone()),
            ],
            messages: vec![
                ("payment", none.clone(), r#"{"id": 1}"#),
                ("payment", none.clone(), r#"{"amount": 1}"#),
                ("refund", none.clone(), r#"{"id": 2}"#),
            ],
        },
    ]
}

/// What `route` says is where a publish of the same message lands, for every bundled
/// exchange type whose choice does not change from one message to the next (`random`
/// advances its generator with every call, route included: it is checked to name exactly
/// one queue, as a publish reaches exactly one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_matches_publishing_for_every_bundled_type() {
    let b = TestBroker::start().await;
    let c = b.client().await;
    c.confirm_select().await.unwrap();
    for case in type_cases() {
        let exchange = format!("x-{}", case.kind);
        c.declare_exchange(&exchange, case.kind, false, object(case.arguments.clone()))
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", case.kind));
        let mut queues: Vec<String> = Vec::new();
        for (queue, key, arguments) in &case.bindings {
            let queue = format!("{}-{queue}", case.kind);
            c.declare_queue(&queue, QueueOptions::default())
                .await
                .unwrap();
            c.bind(Binding {
                exchange: exchange.clone(),
                queue: queue.clone(),
                key: (*key).into(),
                arguments: object(arguments.clone()),
            })
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", case.kind));
            queues.push(queue);
        }
        for (key, headers, body) in &case.messages {
            let mut message = Message::text(*key, *body);
            message.exchange = exchange.clone();
            message.headers = object(headers.clone());
            let answer = c.route(message.clone()).await.unwrap();
            let mut said: Vec<String> = answer["queues"]
                .as_array()
                .unwrap()
                .iter()
                .map(|q| q.as_str().unwrap().to_owned())
                .collect();
            said.sort();
            c.publish(message, false).await.unwrap();
            let mut landed = Vec::new();
            for queue in &queues {
                if c.queue_info(queue).await.unwrap().ready > 0 {
                    landed.push(queue.clone());
                }
                c.purge_queue(queue).await.unwrap();
            }
            landed.sort();
            assert_eq!(said, landed, "{} with key {key:?}, body {body}", case.kind);
        }
    }
    // Every bundled type was covered (random below).
    let mut kinds: Vec<&str> = type_cases().iter().map(|c| c.kind).collect();
    kinds.push("random");
    kinds.sort();
    let mut bundled: Vec<&str> = broker::plugin::STANDARD_EXCHANGES
        .iter()
        .map(|(name, _)| *name)
        .collect();
    bundled.sort();
    assert_eq!(kinds, bundled);

    c.declare_exchange("x-random", "random", false, Headers::new())
        .await
        .unwrap();
    for queue in ["random-a", "random-b"] {
        c.declare_queue(queue, QueueOptions::default())
            .await
            .unwrap();
        c.bind(Binding {
            exchange: "x-random".into(),
            queue: queue.into(),
            key: String::new(),
            arguments: Headers::new(),
        })
        .await
        .unwrap();
    }
    let answer = c.route(to("x-random", "job")).await.unwrap();
    assert_eq!(answer["queues"].as_array().unwrap().len(), 1, "{answer}");
}
