//! The extra exchange types bundled from `plugins/` (consistent-hash, json-router, random,
//! schema-gate), end to end through a real broker: real WebSocket, real redb, the real
//! Wasm components, and the CLI commands `plugins/README.md` shows.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use broker::protocol::{Binding, ErrorCode};
use broker::{Client, Headers, Message, QueueOptions};
use common::{TestBroker, bin};
use serde_json::{Value, json};

fn binding(exchange: &str, queue: &str, key: &str, arguments: Value) -> Binding {
    Binding {
        exchange: exchange.into(),
        queue: queue.into(),
        key: key.into(),
        arguments: arguments.as_object().cloned().unwrap_or_default(),
    }
}

fn args(value: Value) -> Headers {
    value.as_object().cloned().unwrap_or_default()
}

/// The bodies a queue holds.
async fn bodies(c: &Client, queue: &str) -> Vec<String> {
    c.peek_queue(queue, 10_000)
        .await
        .unwrap()
        .iter()
        .map(|p| String::from_utf8(p.message.body.to_vec()).unwrap())
        .collect()
}

fn message(exchange: &str, key: &str, body: &str, headers: Value) -> Message {
    let mut m = Message::text(key, body);
    m.exchange = exchange.into();
    m.headers = args(headers);
    m.properties.persistent = true;
    m
}

/// Publishes with confirms (the connection must be in confirm mode), pipelined.
async fn publish_all(c: &Client, messages: Vec<Message>) {
    let confirms: Vec<_> = messages.into_iter().map(|m| c.publish(m, false)).collect();
    for confirm in confirms {
        confirm.await.unwrap();
    }
}

async fn declare_queues(c: &Client, queues: &[&str]) {
    for q in queues {
        c.declare_queue(q, QueueOptions::durable()).await.unwrap();
    }
}

/// Which queue each body is in; fails if a body is in two queues.
async fn placement(c: &Client, queues: &[&str]) -> BTreeMap<String, String> {
    let mut at = BTreeMap::new();
    for q in queues {
        for body in bodies(c, q).await {
            if let Some(other) = at.insert(body.clone(), q.to_string()) {
                panic!("`{body}` is in both {other} and {q}");
            }
        }
    }
    at
}

/// The `errors` counter of plugin `name` (traps, timeouts, ...).
async fn plugin_errors(c: &Client, name: &str) -> u64 {
    let list = c.list_plugins().await.unwrap();
    let plugin = list["plugins"]
        .as_array()
        .and_then(|all| all.iter().find(|p| p["name"] == name))
        .cloned()
        .unwrap_or_else(|| panic!("no plugin {name} in {list}"));
    assert!(plugin["stats"]["calls"].as_u64() > Some(0), "{plugin}");
    plugin["stats"]["errors"].as_u64().unwrap()
}

/// A JSON array nested deeper than any parser should recurse.
fn deeply_nested() -> String {
    format!("{}{}", "[".repeat(20_000), "]".repeat(20_000))
}

fn code(result: Result<(), broker::ClientError>) -> ErrorCode {
    result.unwrap_err().code().expect("a broker error")
}

/// Every start compiles every bundled plugin (~3-4 ms per KB in a debug build), so they
/// stay small: float formatting or `{:?}` of a value alone adds ~60 KB.
#[test]
fn bundled_exchanges_stay_small() {
    for (name, wasm) in broker::plugin::STANDARD_EXCHANGES {
        assert!(wasm.len() < 150_000, "{name} is {} bytes", wasm.len());
    }
}

#[tokio::test]
async fn consistent_hash_sends_each_key_to_one_queue_by_weight_and_keeps_it_across_restarts() {
    let mut b = TestBroker::start().await;
    let c = b.client().await;
    let queues = ["shard-a", "shard-b", "shard-c"];
    declare_queues(&c, &queues).await;
    c.declare_exchange("shards", "consistent-hash", true, Headers::new())
        .await
        .unwrap();
    for (q, weight) in queues.iter().zip(["1", "1", "2"]) {
        c.bind(binding("shards", q, weight, json!({})))
            .await
            .unwrap();
    }
    // A weight must be a whole number from 1 to 100.
    for bad in ["0", "heavy", ""] {
        let err = code(c.bind(binding("shards", "shard-a", bad, json!({}))).await);
        assert_eq!(err, ErrorCode::InvalidBinding, "key `{bad}`");
    }
    // An unknown exchange argument is refused at declare.
    let err = c
        .declare_exchange(
            "bad",
            "consistent-hash",
            false,
            args(json!({"hash_heder": "x"})),
        )
        .await;
    assert_eq!(code(err), ErrorCode::InvalidField);

    c.confirm_select().await.unwrap();
    let keys: Vec<String> = (0..400).map(|i| format!("customer-{i}")).collect();
    let msgs = keys
        .iter()
        .map(|k| message("shards", k, k, json!({})))
        .collect();
    publish_all(&c, msgs).await;
    let before = placement(&c, &queues).await;
    assert_eq!(before.len(), 400, "every message in exactly one queue");
    let per_queue = |p: &BTreeMap<String, String>, q: &str| p.values().filter(|v| *v == q).count();
    let (a, bq, cq) = (
        per_queue(&before, "shard-a"),
        per_queue(&before, "shard-b"),
        per_queue(&before, "shard-c"),
    );
    assert!(cq > a && cq > bq, "weight 2 gets the most: {a} {bq} {cq}");
    assert!(a > 40 && bq > 40, "weight 1 still gets its share: {a} {bq}");

    // After a restart (durable bindings keep their ids) every key lands where it did.
    for q in queues {
        c.purge_queue(q).await.unwrap();
    }
    drop(c);
    b.restart().await;
    let c = b.client().await;
    c.confirm_select().await.unwrap();
    let msgs = keys
        .iter()
        .map(|k| message("shards", k, k, json!({})))
        .collect();
    publish_all(&c, msgs).await;
    assert_eq!(placement(&c, &queues).await, before);
}

#[tokio::test]
async fn consistent_hash_on_a_header() {
    let b = TestBroker::start().await;
    let c = b.client().await;
    let queues = ["h1", "h2", "h3", "h4"];
    declare_queues(&c, &queues).await;
    c.declare_exchange(
        "by-user",
        "consistent-hash",
        false,
        args(json!({"hash_header": "user"})),
    )
    .await
    .unwrap();
    for q in queues {
        c.bind(binding("by-user", q, "1", json!({}))).await.unwrap();
    }
    c.confirm_select().await.unwrap();
    // Each user's messages, whatever their routing keys, end up together.
    let mut msgs = Vec::new();
    for user in 0..20 {
        for n in 0..5 {
            let body = format!("{user}/{n}");
            msgs.push(message(
                "by-user",
                &format!("key-{n}"),
                &body,
                json!({"user": user}),
            ));
        }
    }
    // Without the header a message goes nowhere.
    msgs.push(message("by-user", "k", "no-user", json!({})));
    publish_all(&c, msgs).await;
    let at = placement(&c, &queues).await;
    assert_eq!(at.len(), 100);
    for user in 0..20 {
        let homes: BTreeSet<&String> = (0..5).map(|n| &at[&format!("{user}/{n}")]).collect();
        assert_eq!(homes.len(), 1, "user {user} is split over {homes:?}");
    }
    let used: BTreeSet<&String> = at.values().collect();
    assert!(used.len() >= 3, "20 users spread over {used:?}");
}

#[tokio::test]
async fn json_router_routes_on_body_fields() {
    let mut b = TestBroker::start().await;
    let c = b.client().await;
    let queues = ["big-de", "shipped", "vip", "everything"];
    declare_queues(&c, &queues).await;
    c.declare_exchange("orders", "json-router", true, Headers::new())
        .await
        .unwrap();
    let rules = [
        ("big-de", json!(r#"amount > 100 && country == "DE""#)),
        (
            "shipped",
            json!(r#"order.status in ["paid", "shipped"] && !exists(order.hold)"#),
        ),
        ("vip", json!("customer.vip || (amount >= 1000)")),
        ("everything", json!(true)),
    ];
    for (q, rule) in rules {
        c.bind(binding("orders", q, "", json!({"match": rule})))
            .await
            .unwrap();
    }
    // A bad expression is refused when binding, saying where.
    let err = c
        .bind(binding(
            "orders",
            "vip",
            "",
            json!({"match": "amount >> 1"}),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::InvalidBinding));
    assert!(err.to_string().contains("at byte 8"), "{err}");
    let err = c.bind(binding("orders", "vip", "", json!({}))).await;
    assert_eq!(code(err), ErrorCode::InvalidBinding);

    c.confirm_select().await.unwrap();
    let bodies_in = [
        r#"{"id": 1, "amount": 250, "country": "DE"}"#,
        r#"{"id": 2, "amount": 250, "country": "FR", "order": {"status": "paid"}}"#,
        r#"{"id": 3, "amount": 5, "order": {"status": "shipped", "hold": true}}"#,
        r#"{"id": 4, "amount": 1500, "country": "DE", "customer": {"vip": false}}"#,
        r#"{"id": 5, "amount": 1, "customer": {"vip": true}}"#,
        "not json at all",
    ];
    let msgs = bodies_in
        .iter()
        .map(|body| message("orders", "any", body, json!({})))
        .collect();
    // A body that is not JSON is routed nowhere; it is not a plugin failure.
    publish_all(&c, msgs).await;
    let ids = |bodies: Vec<String>| -> Vec<i64> {
        let mut ids: Vec<i64> = bodies
            .iter()
            .map(|b| {
                serde_json::from_str::<Value>(b).unwrap()["id"]
                    .as_i64()
                    .unwrap()
            })
            .collect();
        ids.sort_unstable();
        ids
    };
    assert_eq!(ids(bodies(&c, "big-de").await), [1, 4]);
    assert_eq!(ids(bodies(&c, "shipped").await), [2]);
    assert_eq!(ids(bodies(&c, "vip").await), [4, 5]);
    assert_eq!(ids(bodies(&c, "everything").await), [1, 2, 3, 4, 5]);
    // Hostile bodies route nowhere without failing the plugin.
    publish_all(
        &c,
        vec![message("orders", "any", &deeply_nested(), json!({}))],
    )
    .await;
    assert_eq!(bodies(&c, "everything").await.len(), 5);
    assert_eq!(plugin_errors(&c, "json-router").await, 0);

    // The durable bindings' expressions come back after a restart.
    drop(c);
    b.restart().await;
    let c = b.client().await;
    c.confirm_select().await.unwrap();
    let late = r#"{"id": 7, "amount": 300, "country": "DE"}"#;
    publish_all(&c, vec![message("orders", "any", late, json!({}))]).await;
    assert_eq!(ids(bodies(&c, "big-de").await), [1, 4, 7]);
    assert_eq!(ids(bodies(&c, "shipped").await), [2]);
}

#[tokio::test]
async fn random_spreads_messages_evenly_one_queue_each() {
    let b = TestBroker::start().await;
    let c = b.client().await;
    let queues = ["w1", "w2", "w3", "w4"];
    declare_queues(&c, &queues).await;
    c.declare_exchange("spread", "random", false, Headers::new())
        .await
        .unwrap();
    for q in queues {
        c.bind(binding("spread", q, "", json!({}))).await.unwrap();
    }
    c.confirm_select().await.unwrap();
    // One routing key for all: the host must not cache a single choice per key.
    let msgs = (0..2000)
        .map(|i| message("spread", "same", &i.to_string(), json!({})))
        .collect();
    publish_all(&c, msgs).await;
    let at = placement(&c, &queues).await;
    assert_eq!(at.len(), 2000, "each message in exactly one queue");
    for q in queues {
        let n = at.values().filter(|v| *v == q).count();
        // 500 expected; the bounds are about 7 standard deviations.
        assert!((350..650).contains(&n), "{q}: {n}");
    }
}

#[tokio::test]
async fn schema_gate_sends_invalid_bodies_to_the_rejects_queue() {
    let mut b = TestBroker::start().await;
    let c = b.client().await;
    declare_queues(&c, &["payments", "refunds", "rejects"]).await;
    let schema = json!({
        "type": "object",
        "required": ["id", "amount"],
        "properties": {
            "id": {"type": "integer"},
            "amount": {"type": "number", "minimum": 0},
            "currency": {"type": "string", "enum": ["EUR", "USD"]}
        }
    });
    c.declare_exchange("gate", "schema-gate", true, args(json!({"schema": schema})))
        .await
        .unwrap();
    c.bind(binding("gate", "payments", "payment", json!({})))
        .await
        .unwrap();
    c.bind(binding("gate", "refunds", "refund", json!({})))
        .await
        .unwrap();
    c.bind(binding("gate", "rejects", "#invalid", json!({})))
        .await
        .unwrap();
    // Schemas using keywords the gate does not enforce are refused.
    for bad in [json!({"schema": {"pattern": "^a"}}), json!({})] {
        let err = c
            .declare_exchange("gate2", "schema-gate", false, args(bad))
            .await;
        assert_eq!(code(err), ErrorCode::InvalidField);
    }

    c.confirm_select().await.unwrap();
    let msgs = vec![
        message("gate", "payment", r#"{"id": 1, "amount": 10}"#, json!({})),
        message(
            "gate",
            "refund",
            r#"{"id": 2, "amount": 3, "currency": "EUR"}"#,
            json!({}),
        ),
        message("gate", "payment", r#"{"id": 3}"#, json!({})),
        message("gate", "refund", r#"{"id": 4, "amount": -1}"#, json!({})),
        message(
            "gate",
            "payment",
            r#"{"id": 5, "amount": 1, "currency": "GBP"}"#,
            json!({}),
        ),
        message("gate", "payment", "<xml/>", json!({})),
        message("gate", "payment", &deeply_nested(), json!({})),
        message("gate", "unbound", r#"{"id": 6, "amount": 1}"#, json!({})),
    ];
    publish_all(&c, msgs).await;
    assert_eq!(bodies(&c, "payments").await, [r#"{"id": 1, "amount": 10}"#]);
    assert_eq!(
        bodies(&c, "refunds").await,
        [r#"{"id": 2, "amount": 3, "currency": "EUR"}"#]
    );
    assert_eq!(
        bodies(&c, "rejects").await,
        [
            r#"{"id": 3}"#,
            r#"{"id": 4, "amount": -1}"#,
            r#"{"id": 5, "amount": 1, "currency": "GBP"}"#,
            "<xml/>",
            &deeply_nested(),
        ]
    );
    assert_eq!(plugin_errors(&c, "schema-gate").await, 0);

    // The durable exchange comes back with its schema after a restart.
    drop(c);
    b.restart().await;
    let c = b.client().await;
    c.confirm_select().await.unwrap();
    let msgs = vec![
        message("gate", "payment", r#"{"id": 8, "amount": 1}"#, json!({})),
        message("gate", "payment", r#"{"id": "nine"}"#, json!({})),
    ];
    publish_all(&c, msgs).await;
    assert_eq!(bodies(&c, "payments").await.len(), 2);
    let rejects = bodies(&c, "rejects").await;
    assert_eq!(
        rejects.last().map(String::as_str),
        Some(r#"{"id": "nine"}"#)
    );
}

/// Runs the real `broker` CLI against `url`, on a blocking thread (the broker under test
/// runs on this test's runtime).
async fn cli(url: &str, args: &[&str]) -> String {
    let mut cmd = Command::new(bin());
    cmd.args(args).args(["--server", url]);
    let label = format!("{args:?}");
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "broker {label}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The commands in plugins/README.md, through the real CLI.
#[tokio::test]
async fn readme_cli_examples_work() {
    let b = TestBroker::start().await;
    let url = b.url();
    let c = b.client().await;

    cli(
        &url,
        &[
            "declare",
            "exchange",
            "orders",
            "--type",
            "json-router",
            "--durable",
        ],
    )
    .await;
    cli(&url, &["declare", "queue", "big-de", "--durable"]).await;
    cli(
        &url,
        &[
            "bind",
            "orders",
            "big-de",
            "--arg",
            r#"match=amount > 100 && country == "DE""#,
        ],
    )
    .await;
    cli(
        &url,
        &[
            "publish",
            "--exchange",
            "orders",
            "--routing-key",
            "",
            "--persistent",
            "--body",
            r#"{"amount": 250, "country": "DE"}"#,
        ],
    )
    .await;
    cli(
        &url,
        &[
            "publish",
            "--exchange",
            "orders",
            "--routing-key",
            "",
            "--persistent",
            "--body",
            r#"{"amount": 50, "country": "DE"}"#,
        ],
    )
    .await;
    assert_eq!(
        bodies(&c, "big-de").await,
        [r#"{"amount": 250, "country": "DE"}"#]
    );

    cli(
        &url,
        &[
            "declare",
            "exchange",
            "shards",
            "--type",
            "consistent-hash",
            "--durable",
        ],
    )
    .await;
    for (q, weight) in [("shard-1", "1"), ("shard-2", "2")] {
        cli(&url, &["declare", "queue", q, "--durable"]).await;
        cli(&url, &["bind", "shards", q, "--key", weight]).await;
    }
    cli(
        &url,
        &[
            "publish",
            "--exchange",
            "shards",
            "--routing-key",
            "customer-42",
            "--persistent",
            "--body",
            "x",
            "--count",
            "10",
        ],
    )
    .await;
    let placed = placement_counts(&c, &["shard-1", "shard-2"]).await;
    assert!(
        placed == [10, 0] || placed == [0, 10],
        "one key, one queue: {placed:?}"
    );

    cli(&url, &["declare", "exchange", "work", "--type", "random"]).await;
    for q in ["worker-1", "worker-2"] {
        cli(&url, &["declare", "queue", q]).await;
        cli(&url, &["bind", "work", q]).await;
    }
    cli(
        &url,
        &[
            "publish",
            "--exchange",
            "work",
            "--routing-key",
            "job",
            "--body",
            "j",
            "--count",
            "100",
        ],
    )
    .await;
    let placed = placement_counts(&c, &["worker-1", "worker-2"]).await;
    assert_eq!(placed.iter().sum::<usize>(), 100);
    assert!(placed.iter().all(|&n| n > 20), "{placed:?}");

    cli(&url, &[
        "declare",
        "exchange",
        "payments",
        "--type",
        "schema-gate",
        "--durable",
        "--arg",
        r#"schema={"type": "object", "required": ["id", "amount"], "properties": {"amount": {"type": "number", "minimum": 0}}}"#,
    ]).await;
    cli(&url, &["declare", "queue", "payments.valid", "--durable"]).await;
    cli(&url, &["declare", "queue", "payments.rejects", "--durable"]).await;
    cli(
        &url,
        &["bind", "payments", "payments.valid", "--key", "payment"],
    )
    .await;
    cli(
        &url,
        &["bind", "payments", "payments.rejects", "--key", "#invalid"],
    )
    .await;
    cli(
        &url,
        &[
            "publish",
            "--exchange",
            "payments",
            "--routing-key",
            "payment",
            "--persistent",
            "--body",
            r#"{"id": 1, "amount": 5}"#,
        ],
    )
    .await;
    cli(
        &url,
        &[
            "publish",
            "--exchange",
            "payments",
            "--routing-key",
            "payment",
            "--persistent",
            "--body",
            r#"{"id": 2, "amount": -5}"#,
        ],
    )
    .await;
    assert_eq!(
        bodies(&c, "payments.valid").await,
        [r#"{"id": 1, "amount": 5}"#]
    );
    assert_eq!(
        bodies(&c, "payments.rejects").await,
        [r#"{"id": 2, "amount": -5}"#]
    );
}

async fn placement_counts(c: &Client, queues: &[&str]) -> Vec<usize> {
    let mut counts = Vec::new();
    for q in queues {
        counts.push(bodies(c, q).await.len());
    }
    counts
}
