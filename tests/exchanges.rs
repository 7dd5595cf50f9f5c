//! Named exchanges end to end: the standard types (Wasm plugins bundled with the broker)
//! through a real broker, custom plugins uploaded with `load_plugin`, and hostile plugins
//! contained while the rest of the broker keeps serving.

mod common;
#[path = "support/hostile.rs"]
mod hostile;

use std::collections::BTreeSet;

use broker::protocol::{Binding, ErrorCode};
use broker::{Client, Headers, Message, QueueOptions};
use common::TestBroker;
use serde_json::{Value, json};

fn binding(exchange: &str, queue: &str, key: &str, arguments: Value) -> Binding {
    Binding {
        exchange: exchange.into(),
        queue: queue.into(),
        key: key.into(),
        arguments: arguments.as_object().cloned().unwrap_or_default(),
    }
}

/// The bodies a queue holds, as a set.
async fn bodies(c: &Client, queue: &str) -> BTreeSet<String> {
    c.peek_queue(queue, 1000)
        .await
        .unwrap()
        .iter()
        .map(|p| String::from_utf8(p.message.body.to_vec()).unwrap())
        .collect()
}

async fn publish_to(c: &Client, exchange: &str, key: &str, body: &str, headers: Value) {
    let mut m = Message::text(key, body);
    m.exchange = exchange.into();
    m.headers = headers.as_object().cloned().unwrap_or_default();
    c.publish(m, false).await.unwrap();
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn topic_exchange_follows_amqp_semantics() {
    let b = TestBroker::start().await;
    let c = b.client().await;
    c.declare_exchange("t", "topic", false, Headers::new())
        .await
        .unwrap();
    let patterns = [
        ("q1", "a.*.c"),
        ("q2", "a.#"),
        ("q3", "#"),
        ("q4", "*.b.*"),
        ("q5", "a.#.c"),
    ];
    for (queue, pattern) in patterns {
        c.declare_queue(queue, QueueOptions::default())
            .await
            .unwrap();
        c.bind(binding("t", queue, pattern, json!({})))
            .await
            .unwrap();
    }
    // q2 bound twice by overlapping patterns still gets each message once.
    c.bind(binding("t", "q2", "a.b.c", json!({})))
        .await
        .unwrap();
    c.confirm_select().await.unwrap();
    for key in ["a.b.c", "a", "a.c", "x.b.y", "", "a.b.b.c", "b"] {
        let body = if key.is_empty() { "(empty)" } else { key };
        publish_to(&c, "t", key, body, json!({})).await;
    }
    assert_eq!(bodies(&c, "q1").await, set(&["a.b.c"]));
    assert_eq!(
        bodies(&c, "q2").await,
        set(&["a.b.c", "a", "a.c", "a.b.b.c"])
    );
    assert_eq!(
        bodies(&c, "q3").await,
        set(&["a.b.c", "a", "a.c", "x.b.y", "(empty)", "a.b.b.c", "b"])
    );
    assert_eq!(bodies(&c, "q4").await, set(&["a.b.c", "x.b.y"]));
    assert_eq!(bodies(&c, "q5").await, set(&["a.b.c", "a.c", "a.b.b.c"]));
    assert_eq!(
        c.queue_info("q2").await.unwrap().ready,
        4,
        "delivered once per queue"
    );

    // Unbinding removes exactly that route.
    c.unbind(binding("t", "q3", "#", json!({}))).await.unwrap();
    publish_to(&c, "t", "zzz", "zzz", json!({})).await;
    assert!(!bodies(&c, "q3").await.contains("zzz"));
}

#[tokio::test]
async fn direct_fanout_and_headers_exchanges() {
    let b = TestBroker::start().await;
    let c = b.client().await;
    for q in ["d1", "d2", "f1", "f2", "h_all", "h_any"] {
        c.declare_queue(q, QueueOptions::default()).await.unwrap();
    }
    c.declare_exchange("d", "direct", false, Headers::new())
        .await
        .unwrap();
    c.declare_exchange("f", "fanout", false, Headers::new())
        .await
        .unwrap();
    c.declare_exchange("h", "headers", false, Headers::new())
        .await
        .unwrap();
    c.bind(binding("d", "d1", "red", json!({}))).await.unwrap();
    c.bind(binding("d", "d2", "blue", json!({}))).await.unwrap();
    c.bind(binding("f", "f1", "ignored", json!({})))
        .await
        .unwrap();
    c.bind(binding("f", "f2", "", json!({}))).await.unwrap();
    let all = json!({"x-match": "all", "format": "pdf", "type": "report"});
    let any = json!({"x-match": "any", "format": "pdf", "type": "report"});
    c.bind(binding("h", "h_all", "", all)).await.unwrap();
    c.bind(binding("h", "h_any", "", any)).await.unwrap();
    c.confirm_select().await.unwrap();

    publish_to(&c, "d", "red", "r", json!({})).await;
    publish_to(&c, "d", "green", "g", json!({})).await;
    publish_to(&c, "f", "whatever", "everyone", json!({})).await;
    publish_to(
        &c,
        "h",
        "",
        "both",
        json!({"format": "pdf", "type": "report"}),
    )
    .await;
    publish_to(&c, "h", "", "one", json!({"format": "pdf", "type": "log"})).await;
    publish_to(&c, "h", "", "none", json!({"format": "zip"})).await;

    assert_eq!(bodies(&c, "d1").await, set(&["r"]));
    assert!(bodies(&c, "d2").await.is_empty());
    assert_eq!(bodies(&c, "f1").await, set(&["everyone"]));
    assert_eq!(bodies(&c, "f2").await, set(&["everyone"]));
    assert_eq!(bodies(&c, "h_all").await, set(&["both"]));
    assert_eq!(bodies(&c, "h_any").await, set(&["both", "one"]));

    let err = c
        .bind(binding("h", "h_all", "", json!({"x-match": "sometimes"})))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::InvalidBinding), "{err}");
}

#[tokio::test]
async fn durable_exchanges_and_bindings_survive_restart() {
    let mut b = TestBroker::start().await;
    let c = b.client().await;
    c.declare_exchange("events", "topic", true, Headers::new())
        .await
        .unwrap();
    c.declare_queue("audit", QueueOptions::durable())
        .await
        .unwrap();
    c.bind(binding("events", "audit", "user.*", json!({})))
        .await
        .unwrap();
    c.close().await;
    b.restart().await;

    let c = b.client().await;
    c.confirm_select().await.unwrap();
    publish_to(&c, "events", "user.created", "u1", json!({})).await;
    publish_to(&c, "events", "order.created", "o1", json!({})).await;
    assert_eq!(bodies(&c, "audit").await, set(&["u1"]));
    // Redeclaring with the same properties is fine; with others it is refused.
    c.declare_exchange("events", "topic", true, Headers::new())
        .await
        .unwrap();
    let err = c
        .declare_exchange("events", "fanout", true, Headers::new())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::PreconditionFailed));
    c.delete_exchange("events").await.unwrap();
    let mut m = Message::text("user.x", "after delete");
    m.exchange = "events".into();
    let err = c.publish(m, false).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::ExchangeNotFound));
}

#[tokio::test]
async fn hostile_plugins_are_contained_and_the_broker_keeps_serving() {
    let b = TestBroker::start().await;
    let c = b.client().await;
    let info = c
        .deploy_plugin("fragile", &hostile::plugin("trap"))
        .await
        .unwrap();
    assert_eq!(info["name"], "fragile");
    c.deploy_plugin("looping", &hostile::plugin("spin"))
        .await
        .unwrap();
    for (name, bytes) in [
        ("old-abi", hostile::plugin("wrong-abi")),
        ("junk", b"not wasm".to_vec()),
    ] {
        let err = c.deploy_plugin(name, &bytes).await.unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::InvalidPlugin), "{name}: {err}");
    }
    let err = c
        .declare_exchange("x", "junk", false, Headers::new())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::UnknownExchangeType));

    for q in ["ok", "healthy"] {
        c.declare_queue(q, QueueOptions::default()).await.unwrap();
    }
    c.declare_exchange("frag", "fragile", false, Headers::new())
        .await
        .unwrap();
    c.declare_exchange("loop", "looping", false, Headers::new())
        .await
        .unwrap();
    c.declare_exchange("fine", "topic", false, Headers::new())
        .await
        .unwrap();
    c.bind(binding("frag", "ok", "ok", json!({})))
        .await
        .unwrap();
    c.bind(binding("loop", "ok", "ok", json!({})))
        .await
        .unwrap();
    c.bind(binding("fine", "healthy", "#", json!({})))
        .await
        .unwrap();
    c.confirm_select().await.unwrap();

    publish_to(&c, "frag", "ok", "routed", json!({})).await;
    let publish = |exchange: &str, key: &str| {
        let mut m = Message::text(key, key);
        m.exchange = exchange.into();
        c.publish(m, false)
    };
    // An infinite loop is stopped by the fuel budget (within the wait's deadline).
    let err = tokio::time::timeout(common::WAIT, publish("loop", "spin"))
        .await
        .expect("the loop was stopped")
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::PluginError), "{err}");

    // Traps: the instance is replaced each time, until the exchange is quarantined.
    let mut codes = Vec::new();
    for _ in 0..7 {
        codes.push(publish("frag", "boom").await.unwrap_err().code().unwrap());
    }
    assert_eq!(codes[0], ErrorCode::PluginError);
    assert_eq!(
        *codes.last().unwrap(),
        ErrorCode::ExchangeUnavailable,
        "{codes:?}"
    );
    let err = publish("frag", "ok").await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::ExchangeUnavailable));

    // Everything else still works.
    publish("fine", "a.b").await.unwrap();
    publish("", "ok").await.unwrap();
    assert_eq!(bodies(&c, "healthy").await, set(&["a.b"]));
    assert_eq!(bodies(&c, "ok").await, set(&["routed", "ok"]));
}

/// A broker on `data` that loads `plugins` at startup.
async fn start_with_plugins_dir(
    data: &std::path::Path,
    plugins: &std::path::Path,
) -> broker::Broker {
    let mut config = broker::Config::new(data);
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.plugins_dir = Some(plugins.to_owned());
    broker::Broker::start(config).await.unwrap()
}

/// `--plugins-dir`: each `NAME.wasm` is an exchange type from startup on, so durable
/// exchanges of that type come back after a restart.
#[tokio::test]
async fn plugins_dir_loads_custom_types_at_startup() {
    let plugins = tempfile::tempdir().unwrap();
    std::fs::write(plugins.path().join("keyed.wasm"), hostile::plugin("trap")).unwrap();
    std::fs::write(plugins.path().join("broken.wasm"), b"half-written").unwrap();
    let data = tempfile::tempdir().unwrap();
    let start = || start_with_plugins_dir(data.path(), plugins.path());
    let b = start().await;
    let c = Client::connect(&b.url()).await.unwrap();
    c.declare_exchange("custom", "keyed", true, Headers::new())
        .await
        .unwrap();
    let err = c
        .declare_exchange("x", "broken", true, Headers::new())
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Some(ErrorCode::UnknownExchangeType),
        "a bad file is skipped"
    );
    c.declare_queue("inbox", QueueOptions::durable())
        .await
        .unwrap();
    c.bind(binding("custom", "inbox", "hello", json!({})))
        .await
        .unwrap();
    c.close().await;
    b.shutdown().await;

    let b = start().await;
    let c = Client::connect(&b.url()).await.unwrap();
    c.confirm_select().await.unwrap();
    publish_to(&c, "custom", "hello", "restored", json!({})).await;
    assert_eq!(bodies(&c, "inbox").await, set(&["restored"]));
    b.shutdown().await;
}

/// Pipelined publishes reach the router together and are routed in batches: each message
/// still gets its own routing, and a trap fails only its own message.
#[tokio::test]
async fn pipelined_publishes_route_in_batches_each_on_its_own() {
    let b = TestBroker::start().await;
    let c = b.client().await;
    c.deploy_plugin("fragile", &hostile::plugin("trap"))
        .await
        .unwrap();
    c.declare_exchange("t", "topic", false, Headers::new())
        .await
        .unwrap();
    c.declare_exchange("frag", "fragile", false, Headers::new())
        .await
        .unwrap();
    for q in ["even", "odd", "ok"] {
        c.declare_queue(q, QueueOptions::default()).await.unwrap();
    }
    c.bind(binding("t", "even", "n.even.*", json!({})))
        .await
        .unwrap();
    c.bind(binding("t", "odd", "n.odd.*", json!({})))
        .await
        .unwrap();
    c.bind(binding("frag", "ok", "ok", json!({})))
        .await
        .unwrap();
    c.confirm_select().await.unwrap();

    let confirms: Vec<_> = (0..2000)
        .map(|i| {
            let parity = if i % 2 == 0 { "even" } else { "odd" };
            let mut m = Message::text(format!("n.{parity}.{i}"), i.to_string());
            m.exchange = "t".into();
            c.publish(m, false)
        })
        .collect();
    for confirm in confirms {
        confirm.await.unwrap();
    }
    assert_eq!(c.queue_info("even").await.unwrap().ready, 1000);
    assert_eq!(c.queue_info("odd").await.unwrap().ready, 1000);
    let evens = bodies(&c, "even").await;
    assert!(evens.iter().all(|b| b.parse::<u32>().unwrap() % 2 == 0));

    let results: Vec<_> = (0..50)
        .map(|i| {
            let key = if i == 25 { "boom" } else { "ok" };
            let mut m = Message::text(key, i.to_string());
            m.exchange = "frag".into();
            c.publish(m, false)
        })
        .collect();
    let mut failed = Vec::new();
    for (i, result) in results.into_iter().enumerate() {
        if let Err(e) = result.await {
            assert_eq!(e.code(), Some(ErrorCode::PluginError));
            failed.push(i);
        }
    }
    assert_eq!(failed, [25], "only the trapping message fails");
    assert_eq!(c.queue_info("ok").await.unwrap().ready, 49);
}

/// An exchange whose type is missing at startup is not restored; declaring a new one of
/// the same name must not inherit its old stored bindings after the next restart.
#[tokio::test]
async fn redeclared_exchange_does_not_inherit_unrestored_bindings() {
    // The type comes from an embedder's host (not deployed, so not stored) at first only.
    let host = broker::plugin::PluginHost::with_standard_exchanges(Default::default()).unwrap();
    host.load_blocking("keyed", &hostile::plugin("trap"))
        .unwrap();
    let data = tempfile::tempdir().unwrap();
    let start_with = |plugins: Option<broker::plugin::PluginHost>| {
        let mut config = broker::Config::new(data.path());
        config.listen = "127.0.0.1:0".parse().unwrap();
        config.plugins = plugins;
        async { broker::Broker::start(config).await.unwrap() }
    };
    let start = || start_with(None);
    let b = start_with(Some(host)).await;
    let c = Client::connect(&b.url()).await.unwrap();
    c.declare_exchange("risky", "keyed", true, Headers::new())
        .await
        .unwrap();
    c.declare_queue("shipping", QueueOptions::durable())
        .await
        .unwrap();
    c.bind(binding("risky", "shipping", "", json!({})))
        .await
        .unwrap();
    c.close().await;
    b.shutdown().await;

    let b = start().await;
    let c = Client::connect(&b.url()).await.unwrap();
    c.declare_exchange("risky", "fanout", true, Headers::new())
        .await
        .unwrap();
    c.close().await;
    b.shutdown().await;

    let b = start().await;
    let c = Client::connect(&b.url()).await.unwrap();
    c.confirm_select().await.unwrap();
    publish_to(&c, "risky", "", "where?", json!({})).await;
    assert!(
        bodies(&c, "shipping").await.is_empty(),
        "old binding must not come back"
    );
    b.shutdown().await;
}

/// A bind immediately followed by pipelined publishes: the publishes, routed as a batch,
/// must see the binding (everything before a run is applied before it is routed).
#[tokio::test]
async fn pipelined_publishes_see_a_bind_sent_just_before() {
    let b = TestBroker::start().await;
    let c = b.client().await;
    c.declare_exchange("t", "topic", false, Headers::new())
        .await
        .unwrap();
    c.declare_queue("late", QueueOptions::default())
        .await
        .unwrap();
    let mut peer = common::RawPeer::connect(&b.url()).await;
    let mut frames = vec![json!({"id": 0, "op": "confirm_select"})];
    frames.push(json!({"id": 1, "op": "bind", "exchange": "t", "queue": "late", "key": "#"}));
    for i in 2..40 {
        frames.push(
            json!({"id": i, "op": "publish", "exchange": "t", "routing_key": "a.b",
                           "body": i.to_string(), "mandatory": true}),
        );
    }
    let text: Vec<String> = frames.iter().map(Value::to_string).collect();
    for frame in text {
        peer.send_text(frame).await;
    }
    let mut confirmed = 0;
    while confirmed < 38 {
        let reply = peer.recv().await;
        assert_ne!(
            reply["type"], "return",
            "published before the bind applied: {reply}"
        );
        assert_ne!(reply["type"], "error", "{reply}");
        if reply["type"] == "confirm" {
            confirmed += 1;
        }
    }
    assert_eq!(c.queue_info("late").await.unwrap().ready, 38);
}
