//! The bundled standard exchanges, routed through the real plugin host (Wasm), with the
//! AMQP/RabbitMQ semantics their native unit tests check.

use broker::exchange::{BindingId, Exchange, ExchangeError, ExchangeTypes};
use broker::message::{Headers, Message};
use broker::plugin::{Limits, PluginExchange, PluginHost};
use serde_json::json;

fn host() -> PluginHost {
    PluginHost::with_standard_exchanges(Limits::default()).expect("host starts")
}

fn args(value: serde_json::Value) -> Headers {
    value.as_object().expect("an object").clone()
}

fn route(ex: &mut dyn Exchange, msg: &Message) -> Vec<BindingId> {
    let mut out = Vec::new();
    ex.route(msg, &mut out).expect("routes");
    out.sort_unstable();
    out
}

fn key(routing_key: &str) -> Message {
    Message::text(routing_key, "")
}

#[test]
fn standard_types_are_registered() {
    let host = host();
    let plugins = host.plugins();
    let names: Vec<&str> = plugins.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "consistent-hash",
            "direct",
            "fanout",
            "headers",
            "json-router",
            "random",
            "schema-gate",
            "topic"
        ]
    );
    assert!(
        plugins
            .iter()
            .all(|p| p.bundled && p.abi_version == "1.0.0")
    );
    let caps = |name: &str| {
        plugins
            .iter()
            .find(|p| p.name == name)
            .unwrap()
            .capabilities
    };
    assert!(caps("topic").key_only && !caps("topic").reads_headers);
    assert!(!caps("headers").key_only && caps("headers").reads_headers);
    assert!(matches!(
        host.create("x-consistent-hash", "e", &Headers::new()),
        Err(ExchangeError::UnknownType(t)) if t == "x-consistent-hash"
    ));
}

#[test]
fn topic_semantics_through_wasm() {
    let host = host();
    let mut ex = host.create("topic", "t", &Headers::new()).unwrap();
    let patterns = [
        (1, "a.b.c"),
        (2, "a.*.c"),
        (3, "#"),
        (4, "#.#"),
        (5, "a.#"),
        (6, "a.#.b"),
        (7, "*"),
        (8, ""),
        (9, "a."),
        (10, "a.*"),
    ];
    for (id, pattern) in patterns {
        ex.validate_binding(pattern, &Headers::new()).unwrap();
        ex.bind(id, pattern, &Headers::new()).unwrap();
    }
    let table: &[(&str, &[BindingId])] = &[
        ("a.b.c", &[1, 2, 3, 4, 5]),
        ("a.x.c", &[2, 3, 4, 5]),
        ("", &[3, 4, 8]),
        ("a", &[3, 4, 5, 7]),
        ("a.b", &[3, 4, 5, 6, 10]),
        ("a.x.y.b", &[3, 4, 5, 6]),
        ("a.", &[3, 4, 5, 9, 10]),
        ("b.a", &[3, 4]),
    ];
    for (routing_key, want) in table {
        assert_eq!(
            route(ex.as_mut(), &key(routing_key)),
            *want,
            "key {routing_key:?}"
        );
    }
    let long = "x".repeat(300);
    assert!(matches!(
        ex.validate_binding(&long, &Headers::new()),
        Err(ExchangeError::InvalidBinding(_))
    ));
    ex.unbind(3).unwrap();
    ex.unbind(4).unwrap();
    assert_eq!(route(ex.as_mut(), &key("")), vec![8]);
}

#[test]
fn topic_key_cache_serves_repeats_and_forgets_on_rebinding() {
    let host = host();
    let mut ex = host.create("topic", "cached", &Headers::new()).unwrap();
    ex.bind(1, "a.*", &Headers::new()).unwrap();
    assert_eq!(route(ex.as_mut(), &key("a.b")), vec![1]);
    let calls = host.stats("topic").unwrap().calls;
    assert_eq!(route(ex.as_mut(), &key("a.b")), vec![1]);
    let stats = host.stats("topic").unwrap();
    assert_eq!((stats.calls, stats.cache_hits), (calls, 1));
    ex.bind(2, "#", &Headers::new()).unwrap();
    assert_eq!(
        route(ex.as_mut(), &key("a.b")),
        vec![1, 2],
        "bind clears the cache"
    );
    ex.unbind(1).unwrap();
    assert_eq!(
        route(ex.as_mut(), &key("a.b")),
        vec![2],
        "unbind clears the cache"
    );
}

#[test]
fn batches_match_single_routes() {
    let host = host();
    let mut ex: PluginExchange = host
        .create_exchange("topic", "batched", &Headers::new())
        .unwrap();
    for (id, pattern) in [(1, "a.*"), (2, "#.c"), (3, "a.b.c")] {
        ex.bind(id, pattern, &Headers::new()).unwrap();
    }
    let msgs: Vec<Message> = ["a.b", "a.b.c", "x.c", "zzz", "a.b"]
        .into_iter()
        .map(key)
        .collect();
    let refs: Vec<&Message> = msgs.iter().collect();
    let batched: Vec<Vec<BindingId>> = ex
        .route_batch(&refs)
        .into_iter()
        .map(|r| {
            let mut ids = r.unwrap();
            ids.sort_unstable();
            ids
        })
        .collect();
    let single: Vec<Vec<BindingId>> = msgs.iter().map(|m| route(&mut ex, m)).collect();
    assert_eq!(batched, single);
    assert_eq!(batched, vec![vec![1], vec![2, 3], vec![2], vec![], vec![1]]);
}

#[test]
fn direct_semantics_through_wasm() {
    let host = host();
    let mut ex = host.create("direct", "d", &Headers::new()).unwrap();
    ex.bind(1, "orders", &Headers::new()).unwrap();
    ex.bind(2, "orders", &Headers::new()).unwrap();
    ex.bind(3, "", &Headers::new()).unwrap();
    assert_eq!(route(ex.as_mut(), &key("orders")), vec![1, 2]);
    assert_eq!(route(ex.as_mut(), &key("")), vec![3]);
    assert_eq!(route(ex.as_mut(), &key("Orders")), Vec::<BindingId>::new());
    assert_eq!(route(ex.as_mut(), &key("#")), Vec::<BindingId>::new());
    ex.unbind(1).unwrap();
    assert_eq!(route(ex.as_mut(), &key("orders")), vec![2]);
}

#[test]
fn fanout_semantics_through_wasm() {
    let host = host();
    let mut ex = host.create("fanout", "f", &Headers::new()).unwrap();
    assert_eq!(route(ex.as_mut(), &key("x")), Vec::<BindingId>::new());
    ex.bind(1, "", &Headers::new()).unwrap();
    ex.bind(2, "whatever", &Headers::new()).unwrap();
    for k in ["", "x", "a.b"] {
        assert_eq!(route(ex.as_mut(), &key(k)), vec![1, 2]);
    }
}

#[test]
fn headers_semantics_through_wasm() {
    let host = host();
    let mut ex = host.create("headers", "h", &Headers::new()).unwrap();
    let bindings = [
        (
            1,
            json!({"x-match": "all", "format": "pdf", "type": "report"}),
        ),
        (
            2,
            json!({"x-match": "any", "format": "pdf", "type": "report"}),
        ),
        (3, json!({"format": "pdf", "x-tenant": "t1"})),
        (
            4,
            json!({"x-match": "all-with-x", "format": "pdf", "x-tenant": "t1"}),
        ),
        (5, json!({"x-match": "any-with-x", "x-tenant": "t1"})),
        (6, json!({"n": 1})),
        (7, json!({"tags": ["a", "b"]})),
        (8, json!({"present": null})),
        (9, json!({"x-match": "any"})),
    ];
    for (id, binding) in bindings {
        ex.bind(id, "ignored", &args(binding)).unwrap();
    }
    let msg = |headers: serde_json::Value| Message {
        headers: args(headers),
        ..key("any.key")
    };
    let table: Vec<(serde_json::Value, Vec<BindingId>)> = vec![
        (json!({"format": "pdf", "type": "report"}), vec![1, 2, 3]),
        (json!({"format": "pdf"}), vec![2, 3]),
        (json!({"format": "pdf", "x-tenant": "t1"}), vec![2, 3, 4, 5]),
        (json!({"x-tenant": "t1"}), vec![5]),
        (json!({"n": 1.0}), vec![6]),
        (json!({"n": "1"}), vec![]),
        (json!({"tags": ["a", "b"]}), vec![7]),
        (json!({"tags": ["b", "a"]}), vec![]),
        (json!({"present": false}), vec![8]),
        (json!({}), vec![]),
    ];
    for (headers, want) in table {
        assert_eq!(
            route(ex.as_mut(), &msg(headers.clone())),
            want,
            "headers {headers}"
        );
    }
    let bad = args(json!({"x-match": "most"}));
    assert!(matches!(
        ex.validate_binding("", &bad),
        Err(ExchangeError::InvalidBinding(_))
    ));
    assert!(matches!(
        ex.bind(10, "", &bad),
        Err(ExchangeError::InvalidBinding(_))
    ));
}
