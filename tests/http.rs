//! The management HTTP listener end to end: a real broker, real HTTP over TCP, real redb
//! (metrics are in `metrics.rs`).

mod common;
#[path = "support/hostile.rs"]
mod hostile;

use std::collections::HashSet;
use std::net::SocketAddr;

use broker::protocol::{Binding, Subscribe};
use broker::{Client, QueueOptions};
use common::*;
use serde_json::json;

/// A failed API call: its status and `error.code`.
fn error_of(reply: &HttpReply) -> (u16, String) {
    let body = reply.json();
    let code = body["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no error code in {body}"));
    assert!(body["error"]["message"].is_string(), "{body}");
    (reply.status, code.to_owned())
}

#[tokio::test]
async fn health_readiness_and_unknown_paths() {
    let b = HttpBroker::start().await;
    let health = b.get("/healthz").await;
    assert_eq!((health.status, health.body.as_str()), (200, "ok\n"));

    let ready = b.get("/readyz").await;
    assert_eq!(ready.status, 200, "{}", ready.body);
    let ready = ready.json();
    assert_eq!(ready["ready"], true);
    for check in ["store", "router", "plugins"] {
        assert_eq!(ready["checks"][check]["ok"], true, "{ready}");
    }

    assert_eq!(error_of(&b.get("/nope").await), (404, "unknown_op".into()));
    assert_eq!(
        error_of(&b.post("/api/queues", None).await),
        (405, "unknown_op".into())
    );
    assert_eq!(
        error_of(&b.get("/api/queues/missing/purge").await),
        (405, "unknown_op".into())
    );
    b.broker.shutdown().await;
}

/// A durable exchange whose plugin type is not loaded at startup makes the broker not
/// ready (and is listed as unrestored) until a start that loads it.
#[tokio::test]
async fn readyz_fails_while_a_stored_exchange_waits_for_its_plugin() {
    let plugins = tempfile::tempdir().unwrap();
    std::fs::write(plugins.path().join("keyed.wasm"), hostile::plugin("trap")).unwrap();
    let data = tempfile::tempdir().unwrap();
    // The type comes from an embedder's host (not deployed, so not stored) at first only,
    // and from the plugins directory (deployed) at the third start.
    let embedded = broker::plugin::PluginHost::with_standard_exchanges(Default::default()).unwrap();
    embedded
        .load_blocking("keyed", &hostile::plugin("trap"))
        .unwrap();
    let start = |host: Option<broker::plugin::PluginHost>, with_plugins: bool| {
        let mut config = broker::Config::new(data.path());
        config.listen = "127.0.0.1:0".parse().unwrap();
        config.http = Some("127.0.0.1:0".parse().unwrap());
        config.plugins = host;
        config.plugins_dir = with_plugins.then(|| plugins.path().to_owned());
        broker::Broker::start(config)
    };
    let b = start(Some(embedded), false).await.unwrap();
    let c = Client::connect(&b.url()).await.unwrap();
    c.declare_exchange("custom", "keyed", true, Default::default())
        .await
        .unwrap();
    c.close().await;
    b.shutdown().await;

    let b = start(None, false).await.unwrap();
    let addr = b.http_addr().unwrap();
    let ready = http(addr, "GET", "/readyz", None).await;
    assert_eq!(ready.status, 503, "{}", ready.body);
    let ready = ready.json();
    assert_eq!(ready["ready"], false);
    assert_eq!(ready["checks"]["plugins"]["ok"], false);
    assert!(
        ready["checks"]["plugins"]["detail"]
            .as_str()
            .unwrap()
            .contains("custom"),
        "{ready}"
    );
    assert_eq!(ready["checks"]["store"]["ok"], true);
    let exchanges = http(addr, "GET", "/api/exchanges", None).await.json();
    assert_eq!(exchanges["unrestored"], json!(["custom"]));
    b.shutdown().await;

    // The plugins directory deploys the type (a stored version): the exchange is restored
    // at this start, and at the next one from the stored version.
    let b = start(None, true).await.unwrap();
    let ready = http(b.http_addr().unwrap(), "GET", "/readyz", None).await;
    assert_eq!(ready.status, 200, "{}", ready.body);
    b.shutdown().await;
    let b = start(None, false).await.unwrap();
    let ready = http(b.http_addr().unwrap(), "GET", "/readyz", None).await;
    assert_eq!(ready.status, 200, "{}", ready.body);
    b.shutdown().await;
}

/// A stored exchange whose type is missing at startup comes back, with its stored
/// bindings, as soon as its type is deployed over the protocol: no restart needed, and
/// the broker turns ready. A binding to a queue deleted meanwhile does not come back.
#[tokio::test]
async fn a_stored_exchange_returns_with_its_bindings_when_its_type_is_deployed() {
    let data = tempfile::tempdir().unwrap();
    let embedded = broker::plugin::PluginHost::with_standard_exchanges(Default::default()).unwrap();
    embedded
        .load_blocking("keyed", &hostile::plugin("trap"))
        .unwrap();
    let start = |host: Option<broker::plugin::PluginHost>| {
        let mut config = broker::Config::new(data.path());
        config.listen = "127.0.0.1:0".parse().unwrap();
        config.http = Some("127.0.0.1:0".parse().unwrap());
        config.plugins = host;
        broker::Broker::start(config)
    };
    let bind = |queue: &str| Binding {
        exchange: "custom".into(),
        queue: queue.into(),
        key: "k".into(),
        arguments: Default::default(),
    };
    let b = start(Some(embedded)).await.unwrap();
    let c = Client::connect(&b.url()).await.unwrap();
    c.declare_exchange("custom", "keyed", true, Default::default())
        .await
        .unwrap();
    for queue in ["orders", "gone"] {
        c.declare_queue(queue, QueueOptions::durable())
            .await
            .unwrap();
        c.bind(bind(queue)).await.unwrap();
    }
    c.close().await;
    b.shutdown().await;

    let b = start(None).await.unwrap();
    let addr = b.http_addr().unwrap();
    assert_eq!(http(addr, "GET", "/readyz", None).await.status, 503);
    let c = Client::connect(&b.url()).await.unwrap();
    c.confirm_select().await.unwrap();
    let publish = || {
        let mut m = persistent("k", "routed by the restored exchange");
        m.exchange = "custom".into();
        c.publish(m, false)
    };
    let err = publish().await.unwrap_err();
    assert_eq!(
        err.code(),
        Some(broker::protocol::ErrorCode::ExchangeNotFound)
    );
    c.delete_queue("gone").await.unwrap();

    c.deploy_plugin("keyed", &hostile::plugin("trap"))
        .await
        .unwrap();
    let ready = http(addr, "GET", "/readyz", None).await;
    assert_eq!(ready.status, 200, "{}", ready.body);
    let exchanges = c.list_exchanges().await.unwrap();
    assert!(exchanges.unrestored.is_empty(), "{exchanges:?}");
    let custom = exchanges
        .exchanges
        .iter()
        .find(|e| e.exchange == "custom")
        .expect("restored");
    assert_eq!((custom.kind.as_str(), custom.durable), ("keyed", true));
    assert_eq!(custom.bindings, 1, "the binding to `gone` went with it");
    publish().await.unwrap();
    assert_eq!(c.queue_info("orders").await.unwrap().ready, 1);
    c.close().await;
    b.shutdown().await;

    // Stored as it was: back at the next start, from the deployed version.
    let b = start(None).await.unwrap();
    let ready = http(b.http_addr().unwrap(), "GET", "/readyz", None).await;
    assert_eq!(ready.status, 200, "{}", ready.body);
    let c = Client::connect(&b.url()).await.unwrap();
    let bindings = c.list_bindings().await.unwrap();
    assert_eq!(bindings, [bind("orders")]);
    c.close().await;
    b.shutdown().await;
}

/// The JSON API lists, peeks without consuming, purges and replays dead letters, with
/// the WebSocket protocol's error codes (and the same messages).
#[tokio::test]
async fn management_api_works_like_the_protocol() {
    let b = HttpBroker::start().await;
    let c = b.client().await;
    c.confirm_select().await.unwrap();
    c.declare_queue("orders", QueueOptions::durable())
        .await
        .unwrap();
    for i in 0..3 {
        let mut m = persistent("orders", &format!("order {i}"));
        m.properties.message_id = Some(format!("m{i}"));
        c.publish(m, false).await.unwrap();
    }

    let queues = b.get("/api/queues").await;
    assert_eq!(queues.status, 200);
    assert_eq!(queues.header("content-type"), Some("application/json"));
    let queues = queues.json();
    let orders = &queues["queues"][0];
    assert_eq!(orders["queue"], "orders");
    assert_eq!(
        (orders["ready"].as_u64(), orders["published"].as_u64()),
        (Some(3), Some(3))
    );

    // Peek: in order, limited, nothing consumed.
    let peeked = b.get("/api/queues/orders/messages?limit=2").await.json();
    let ids: Vec<&str> = peeked["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["message"]["properties"]["message_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["m0", "m1"]);
    assert_eq!(c.queue_info("orders").await.unwrap().ready, 3);

    // Errors: the same code and message the WebSocket protocol gives.
    let missing = b.get("/api/queues/nope/messages").await;
    assert_eq!(error_of(&missing), (404, "queue_not_found".into()));
    let ws_error = c.peek_queue("nope", 1).await.unwrap_err();
    assert_eq!(
        missing.json()["error"]["message"].as_str().unwrap(),
        ws_error.to_string().split_once(": ").map_or("", |(_, m)| m),
        "{ws_error}"
    );
    let mut raw = RawPeer::connect(&b.broker.url()).await;
    let ws = raw
        .call(json!({"id": 1, "op": "peek_queue", "queue": "orders", "limit": "lots"}))
        .await;
    let bad = b.get("/api/queues/orders/messages?limit=lots").await;
    assert_eq!(error_of(&bad), (400, "invalid_field".into()));
    assert_eq!(ws["code"], "invalid_field");
    let (http_msg, ws_msg) = (
        bad.json()["error"]["message"].clone(),
        ws["message"].clone(),
    );
    // serde's message names the column, which differs with the id's width: compare the rest.
    let strip = |m: &serde_json::Value| {
        m.as_str()
            .unwrap()
            .split(" at line")
            .next()
            .unwrap()
            .to_owned()
    };
    assert_eq!(strip(&http_msg), strip(&ws_msg));
    let long = "q".repeat(300);
    assert_eq!(
        error_of(&b.post(&format!("/api/queues/{long}/purge"), None).await),
        (404, "queue_not_found".into())
    );
    assert_eq!(
        error_of(
            &b.post("/api/queues/orders/requeue", Some("{not json"))
                .await
        ),
        (400, "malformed_json".into())
    );
    assert_eq!(
        error_of(
            &b.post("/api/queues/orders/requeue", Some(r#"{"message_id": 7}"#))
                .await
        ),
        (400, "invalid_field".into())
    );
    let huge = format!(r#"{{"message_id": "{}"}}"#, "x".repeat(70 * 1024));
    assert_eq!(
        error_of(&b.post("/api/queues/orders/requeue", Some(&huge)).await),
        (413, "frame_too_large".into())
    );
    assert_eq!(
        error_of(&b.get("/api/queues/bad%ZZname").await),
        (400, "invalid_field".into())
    );

    // Another site's page cannot change anything through the operator's browser; the
    // page's own origin can.
    let foreign = http_with_headers(
        b.addr(),
        "POST",
        "/api/queues/orders/purge",
        None,
        &[("Origin", "http://evil.example")],
    )
    .await;
    assert_eq!(error_of(&foreign), (403, "access_refused".into()));
    assert_eq!(c.queue_info("orders").await.unwrap().ready, 3);
    let own_origin = format!("http://{}", b.addr());
    let own = http_with_headers(
        b.addr(),
        "POST",
        "/api/queues/nope/purge",
        None,
        &[("Origin", &own_origin)],
    )
    .await;
    assert_eq!(error_of(&own), (404, "queue_not_found".into()));

    // An exclusive queue is locked to its connection, over HTTP too.
    let owner = b.client().await;
    owner
        .declare_queue(
            "mine",
            QueueOptions {
                exclusive: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        error_of(&b.post("/api/queues/mine/purge", None).await),
        (423, "resource_locked".into())
    );

    // Dead letters: reject one, see it in orders.dlq, requeue it by id over HTTP.
    let mut sub = c.consume("orders", 1).await.unwrap();
    let d = next(&mut sub).await;
    assert_eq!(d.message.properties.message_id.as_deref(), Some("m0"));
    c.reject(d.delivery_tag, false).unwrap();
    c.cancel(&sub.consumer_tag).await.unwrap();
    let dlq = wait_for(|| async {
        let peeked = b.get("/api/queues/orders.dlq/messages").await.json();
        let n = peeked["messages"].as_array().map_or(0, Vec::len);
        (n == 1).then_some(peeked)
    })
    .await;
    assert_eq!(
        dlq["messages"][0]["message"]["headers"]["x-death"][0]["reason"],
        "rejected"
    );
    let moved = b
        .post(
            "/api/queues/orders.dlq/requeue",
            Some(r#"{"message_id": "m0"}"#),
        )
        .await;
    assert_eq!(moved.status, 200, "{}", moved.body);
    assert_eq!(moved.json()["moved"], 1);
    assert_eq!(c.queue_info("orders.dlq").await.unwrap().ready, 0);
    // The two unacked-then-released messages and the requeued one.
    let orders = c.queue_info("orders").await.unwrap();
    assert_eq!(orders.ready + orders.unacked, 3);

    // Purge: reports the count, empties the queue (durably: after a restart too).
    let purged = b.post("/api/queues/orders/purge", None).await;
    assert_eq!(purged.status, 200, "{}", purged.body);
    assert_eq!(purged.json()["messages"].as_u64(), Some(orders.ready));
    assert_eq!(c.queue_info("orders").await.unwrap().ready, 0);
    b.broker.shutdown().await;
}

/// A durable topic exchange `events` bound to durable queue `audit` with `user.#`.
async fn declare_events_to_audit(c: &Client) {
    c.declare_exchange("events", "topic", true, Default::default())
        .await
        .unwrap();
    c.declare_queue("audit", QueueOptions::durable())
        .await
        .unwrap();
    c.bind(Binding {
        exchange: "events".into(),
        queue: "audit".into(),
        key: "user.#".into(),
        arguments: Default::default(),
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn lists_exchanges_bindings_plugins_and_connections() {
    let b = HttpBroker::start().await;
    let c = b.client().await;
    declare_events_to_audit(&c).await;
    let _sub = c
        .subscribe(Subscribe {
            queue: "audit".into(),
            prefetch: 10,
            auto_ack: false,
            consumer_tag: Some("auditor".into()),
            filter: None,
            exclusive: false,
            priority: 0,
            consumer_timeout_ms: None,
        })
        .await
        .unwrap();

    let exchanges = b.get("/api/exchanges").await.json();
    let names: Vec<&str> = exchanges["exchanges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["exchange"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "",
            "amq.direct",
            "amq.fanout",
            "amq.headers",
            "amq.match",
            "amq.topic",
            "events"
        ]
    );
    assert_eq!(exchanges["exchanges"][6]["type"], "topic");
    assert_eq!(exchanges["exchanges"][6]["bindings"], 1);

    let bindings = b.get("/api/bindings").await.json();
    assert_eq!(
        bindings["bindings"],
        json!([{"exchange": "events", "queue": "audit", "key": "user.#", "arguments": {}}])
    );

    let plugins = b.get("/api/plugins").await.json();
    let names: HashSet<&str> = plugins["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    for bundled in ["direct", "topic", "fanout", "headers", "redact"] {
        assert!(names.contains(bundled), "{names:?}");
    }

    // Only client connections (the API's own is not one).
    let conns = b.get("/api/connections").await.json();
    let conns = conns["connections"].as_array().unwrap();
    assert_eq!(conns.len(), 1, "{conns:?}");
    assert_eq!(
        conns[0]["consumers"],
        json!([{"queue": "audit", "consumer_tag": "auditor"}])
    );
    assert!(conns[0]["peer"].as_str().unwrap().starts_with("127.0.0.1:"));
    b.broker.shutdown().await;
}

/// The real binary serves HTTP where `--http` says (here a free port).
#[tokio::test]
async fn the_binary_serves_http_on_its_flag() {
    let data = tempfile::tempdir().unwrap();
    let process = BrokerProcess::spawn(data.path());
    let addr: SocketAddr = process
        .http_url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .unwrap();
    assert_eq!(http(addr, "GET", "/healthz", None).await.status, 200);
    let page = http(addr, "GET", "/", None).await;
    assert_eq!(page.status, 200);
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert!(
        page.body.contains("<script src=\"/app.js\""),
        "the page loads its script"
    );
    let script = http(addr, "GET", "/app.js", None).await;
    assert_eq!(script.status, 200);
    assert!(
        script
            .header("content-type")
            .unwrap()
            .starts_with("text/javascript")
    );
}

/// `--log-format json`: one JSON object per line, one line per connection opened and
/// closed, per plugin deploy, per plugin trap and per batch of dead letters.
#[tokio::test]
async fn json_logs_have_one_line_per_event() {
    let data = tempfile::tempdir().unwrap();
    let log_path = data.path().join("broker.log");
    let (mut child, line) = common::spawn_with_json_log(&data.path().join("db"), &log_path);
    assert!(
        !line.contains("http://"),
        "--http off serves no HTTP: {line}"
    );
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("ws://"))
        .unwrap()
        .to_owned();

    let c = Client::connect(&url).await.unwrap();
    c.confirm_select().await.unwrap();
    c.declare_queue("jobs", QueueOptions::durable())
        .await
        .unwrap();
    for i in 0..3 {
        c.publish(persistent("jobs", &i.to_string()), false)
            .await
            .unwrap();
    }
    let mut sub = c.consume("jobs", 10).await.unwrap();
    let mut last = 0;
    for _ in 0..3 {
        last = next(&mut sub).await.delivery_tag;
    }
    // One nack of all three: one dead-letter batch.
    c.nack(last, true, false).unwrap();
    c.queue_info("jobs").await.unwrap();
    c.deploy_plugin("keyed", &hostile::plugin("trap"))
        .await
        .unwrap();
    c.declare_exchange("custom", "keyed", false, Default::default())
        .await
        .unwrap();
    let mut boom = broker::Message::text("boom", "x");
    boom.exchange = "custom".into();
    c.publish(boom, false).await.unwrap_err();
    c.close().await;

    let lines = wait_for(|| async {
        let text = std::fs::read_to_string(&log_path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect();
        let closed = lines
            .iter()
            .any(|l| l["fields"]["message"] == "connection closed");
        closed.then_some(lines)
    })
    .await;
    let _ = child.kill();
    let _ = child.wait();
    let with = |message: &str| -> Vec<&serde_json::Value> {
        lines
            .iter()
            .filter(|l| l["fields"]["message"] == message)
            .collect()
    };
    assert_eq!(with("connection opened").len(), 1, "{lines:?}");
    assert_eq!(with("connection closed").len(), 1, "{lines:?}");
    let dead = with("messages dead-lettered");
    assert_eq!(dead.len(), 1, "{lines:?}");
    assert_eq!(dead[0]["fields"]["queue"], "jobs");
    assert_eq!(dead[0]["fields"]["reason"], "rejected");
    assert_eq!(dead[0]["fields"]["messages"], 3);
    assert_eq!(dead[0]["level"], "INFO");
    // The deploy's audit line: who, from where, in which vhost.
    let audited = with("plugin change requested");
    assert_eq!(audited.len(), 1, "{lines:?}");
    assert_eq!(audited[0]["target"], "audit");
    let fields = &audited[0]["fields"];
    assert_eq!(fields["event"], "plugin_deploy");
    assert_eq!(fields["user"], "guest");
    assert_eq!(fields["peer"], "127.0.0.1");
    assert_eq!(fields["vhost"], "/");
    assert_eq!(fields["plugin"], "keyed");
    let deployed = with("plugin version active");
    assert_eq!(deployed.len(), 1, "{lines:?}");
    assert_eq!(deployed[0]["fields"]["plugin"], "keyed");
    assert_eq!(deployed[0]["fields"]["version"], 1);
    let trapped = with("plugin call failed");
    assert_eq!(trapped.len(), 1, "{lines:?}");
    assert_eq!(trapped[0]["fields"]["exchange"], "custom");
    assert_eq!(trapped[0]["fields"]["plugin"], "keyed");
    assert_eq!(trapped[0]["fields"]["version"], 1);
    assert_eq!(trapped[0]["level"], "WARN");
}

/// The list operations behind the API also have CLI commands.
#[tokio::test]
async fn cli_lists_exchanges_bindings_and_connections() {
    let b = HttpBroker::start().await;
    let c = b.client().await;
    declare_events_to_audit(&c).await;
    let run = |command: &'static str| {
        let url = b.broker.url();
        tokio::task::spawn_blocking(move || {
            let out = std::process::Command::new(bin())
                .args([command, "--server", &url])
                .output()
                .unwrap();
            assert!(out.status.success(), "{command}: {out:?}");
            String::from_utf8(out.stdout).unwrap()
        })
    };
    let exchanges = run("exchanges").await.unwrap();
    let events = exchanges.lines().find(|l| l.starts_with("events")).unwrap();
    assert_eq!(
        events.split_whitespace().collect::<Vec<_>>(),
        ["events", "topic", "1", "0", "0", "0", "true", "ok"],
        "{exchanges}"
    );
    assert!(exchanges.contains("(default)"), "{exchanges}");
    let bindings = run("bindings").await.unwrap();
    assert!(
        bindings.contains("events -> audit  \"user.#\"  {}"),
        "{bindings}"
    );
    let connections = run("connections").await.unwrap();
    // The test's client and the CLI's own connection.
    assert_eq!(connections.lines().count(), 3, "{connections}");
    assert!(connections.contains("127.0.0.1:"), "{connections}");
    b.broker.shutdown().await;
}
