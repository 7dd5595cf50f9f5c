//! The HTTP API's plugin endpoints and rate history, as docs/http.md shows them with curl:
//! deploy a version by uploading its `.wasm` (normally, as a shadow or as a canary),
//! roll back, see where a message would go
//! (`route`), and the rates the broker keeps for the page's chart.

mod common;

use broker::plugin::STANDARD_EXCHANGES;
use common::{HttpBroker, HttpReply, http, http_bytes, http_with_headers, wait_for};
use serde_json::{Value, json};

fn bundled(name: &str) -> &'static [u8] {
    STANDARD_EXCHANGES
        .iter()
        .find(|(n, _)| *n == name)
        .unwrap()
        .1
}

async fn upload(b: &HttpBroker, path: &str, wasm: &[u8]) -> HttpReply {
    let wasm_type = [("Content-Type", "application/wasm")];
    http_bytes(b.addr(), "POST", path, wasm, &wasm_type).await
}

fn ok(reply: &HttpReply) -> Value {
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.json()
}

/// Upload v1 (`direct`'s bytes) and v2 (`fanout`'s) of plugin `flip`: `route` names the
/// version deciding and the queues it picks, publishing then does the same, and a rollback
/// brings v1's routing back.
#[tokio::test]
async fn upload_deploys_versions_route_shows_them_and_rollback_returns() {
    let b = HttpBroker::start().await;
    let addr = b.addr();
    let v1 = ok(&upload(&b, "/api/plugins/flip/versions", bundled("direct")).await);
    assert_eq!(
        (v1["name"].clone(), v1["version"].clone()),
        (json!("flip"), json!(1))
    );
    ok(&http(
        addr,
        "PUT",
        "/api/exchanges/live",
        Some(r#"{"type": "flip"}"#),
    )
    .await);
    for queue in ["a", "b"] {
        ok(&http(addr, "PUT", &format!("/api/queues/{queue}"), Some("{}")).await);
        let binding = json!({"exchange": "live", "queue": queue, "key": queue}).to_string();
        ok(&http(addr, "POST", "/api/bindings", Some(&binding)).await);
    }
    let message = r#"{"routing_key": "a", "body": "hello"}"#;
    let route = || http(addr, "POST", "/api/exchanges/live/route", Some(message));
    let routed = ok(&route().await);
    assert_eq!(routed["plugin_version"], 1, "{routed}");
    assert_eq!(routed["type"], "flip");
    assert_eq!(routed["queues"], json!(["a"]));
    assert_eq!(
        routed["bindings"],
        json!([{"queue": "a", "key": "a", "arguments": {}}])
    );

    let v2 = ok(&upload(
        &b,
        "/api/plugins/flip/versions?auto_rollback=true",
        bundled("fanout"),
    )
    .await);
    assert_eq!(v2["version"], 2, "{v2}");
    let routed = ok(&route().await);
    assert_eq!(routed["plugin_version"], 2, "{routed}");
    assert_eq!(routed["queues"], json!(["a", "b"]));
    // Routing only shows: nothing was enqueued; publishing then goes where it said.
    let admin = b.client().await;
    assert_eq!(admin.queue_info("b").await.unwrap().ready, 0);
    let published = http(addr, "POST", "/api/exchanges/live/publish", Some(message)).await;
    assert_eq!(ok(&published), json!({"routed": true}));
    assert_eq!(admin.queue_info("a").await.unwrap().ready, 1);
    assert_eq!(admin.queue_info("b").await.unwrap().ready, 1);
    // The same bytes again are no new version.
    let again = ok(&upload(&b, "/api/plugins/flip/versions", bundled("fanout")).await);
    assert_eq!(
        (again["version"].clone(), again["unchanged"].clone()),
        (json!(2), json!(true))
    );

    let back = ok(&http(addr, "POST", "/api/plugins/flip/rollback", None).await);
    assert_eq!(back["version"], 1, "{back}");
    assert_eq!(ok(&route().await)["queues"], json!(["a"]));
    let to_v2 = r#"{"version": 2}"#;
    let forward = ok(&http(addr, "POST", "/api/plugins/flip/rollback", Some(to_v2)).await);
    assert_eq!(forward["version"], 2, "{forward}");
    let history = admin.plugin_history("flip").await.unwrap();
    assert_eq!(history["versions"][1]["deployed_by"], "guest", "{history}");

    // The default exchange by its API name; a missing exchange is 404.
    let direct = r#"{"routing_key": "b"}"#;
    let routed = ok(&http(
        addr,
        "POST",
        "/api/exchanges/amq.default/route",
        Some(direct),
    )
    .await);
    assert_eq!(
        (routed["type"].clone(), routed["queues"].clone()),
        (json!("default"), json!(["b"]))
    );
    let missing = http(addr, "POST", "/api/exchanges/nope/route", Some(message)).await;
    assert_eq!(missing.status, 404, "{}", missing.body);
}

/// Bad uploads are refused with their error and leave the active version running; the
/// body limit is the plugin size limit; deploying needs the `plugin` permission.
#[tokio::test]
async fn bad_uploads_are_refused_and_the_active_version_stays() {
    let b = HttpBroker::start().await;
    let addr = b.addr();
    ok(&upload(&b, "/api/plugins/keep/versions", bundled("direct")).await);
    let error = |reply: &HttpReply| (reply.status, reply.json()["error"]["code"].clone());

    let garbage = upload(&b, "/api/plugins/keep/versions", b"\0asm not really").await;
    assert_eq!(
        error(&garbage),
        (400, json!("invalid_plugin")),
        "{}",
        garbage.body
    );
    let empty = upload(&b, "/api/plugins/keep/versions", b"").await;
    assert_eq!(
        error(&empty),
        (400, json!("invalid_plugin")),
        "{}",
        empty.body
    );
    let limit = broker::plugin::Limits::default().max_module_bytes;
    let huge = upload(&b, "/api/plugins/keep/versions", &vec![0; limit + 1]).await;
    assert_eq!(
        error(&huge),
        (413, json!("frame_too_large")),
        "{}",
        huge.body
    );
    let reserved = upload(&b, "/api/plugins/topic/versions", bundled("direct")).await;
    assert_eq!(reserved.status, 400, "{}", reserved.body);
    let flag = upload(
        &b,
        "/api/plugins/keep/versions?auto_rollback=maybe",
        bundled("fanout"),
    )
    .await;
    assert_eq!(error(&flag), (400, json!("invalid_field")), "{}", flag.body);
    let no_earlier = http(addr, "POST", "/api/plugins/keep/rollback", None).await;
    assert_eq!(error(&no_earlier), (404, json!("plugin_not_found")));

    let admin = b.client().await;
    let plugins = admin.list_plugins().await.unwrap();
    let keep = plugins["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "keep")
        .unwrap()
        .clone();
    assert_eq!(keep["active_version"], 1, "{keep}");

    // A management user without the plugin permission may not deploy or roll back.
    admin
        .add_user("ops", "pw", &[broker::auth::Tag::Management])
        .await
        .unwrap();
    admin
        .set_permissions(common::all_permissions("ops", "/"))
        .await
        .unwrap();
    let ops = broker::client::credentials::basic_header("ops", "pw");
    let as_ops = [
        ("Authorization", ops.as_str()),
        ("Content-Type", "application/wasm"),
    ];
    let path = "/api/plugins/keep/versions";
    let refused = http_bytes(addr, "POST", path, bundled("fanout"), &as_ops).await;
    assert_eq!(
        error(&refused),
        (403, json!("access_refused")),
        "{}",
        refused.body
    );
    let rollback = "/api/plugins/keep/rollback";
    let refused = http_with_headers(addr, "POST", rollback, None, &as_ops[..1]).await;
    assert_eq!(refused.status, 403, "{}", refused.body);
    // Nor may a page of another site, through the operator's browser.
    let cross = [
        ("Content-Type", "application/wasm"),
        ("Origin", "http://evil.example"),
    ];
    let refused = http_bytes(addr, "POST", path, bundled("fanout"), &cross).await;
    assert_eq!(refused.status, 403, "{}", refused.body);
}

/// `?shadow=true` and `?canary=PERCENT` deploy the upload on trial, as the CLI's
/// `--shadow` and `--canary` do: the shadow (fanout's bytes) decides nothing while the
/// active version (direct's) routes, its differences show in `GET .../shadow`; a canary
/// replaces the shadow; bad values are `400 invalid_field` and change nothing; rollback
/// drops the trial and the active version stays.
#[tokio::test]
async fn uploads_deploy_shadows_and_canaries_and_bad_modes_are_refused() {
    let b = HttpBroker::start().await;
    let addr = b.addr();
    let admin = b.client().await;
    ok(&upload(&b, "/api/plugins/trial/versions", bundled("direct")).await);
    ok(&http(
        addr,
        "PUT",
        "/api/exchanges/live",
        Some(r#"{"type": "trial"}"#),
    )
    .await);
    for queue in ["a", "b"] {
        ok(&http(addr, "PUT", &format!("/api/queues/{queue}"), Some("{}")).await);
        let binding = json!({"exchange": "live", "queue": queue, "key": queue}).to_string();
        ok(&http(addr, "POST", "/api/bindings", Some(&binding)).await);
    }

    let shadow = ok(&upload(
        &b,
        "/api/plugins/trial/versions?shadow=true",
        bundled("fanout"),
    )
    .await);
    assert_eq!(shadow["version"], 2, "{shadow}");
    assert_eq!(shadow["trial"]["mode"], "shadow", "{shadow}");
    assert_eq!(shadow["active_version"], 1, "{shadow}");
    let message = r#"{"routing_key": "a", "body": "hello"}"#;
    let published = http(addr, "POST", "/api/exchanges/live/publish", Some(message)).await;
    assert_eq!(ok(&published), json!({"routed": true}));
    // The active version decided: the shadow's fanout did not reach b.
    assert_eq!(admin.queue_info("a").await.unwrap().ready, 1);
    assert_eq!(admin.queue_info("b").await.unwrap().ready, 0);
    // The shadow runs after the publisher is answered: its report follows shortly.
    let report = wait_for(|| async {
        let report = ok(&http(addr, "GET", "/api/plugins/trial/shadow", None).await);
        (report["differed"] == 1).then_some(report)
    })
    .await;
    assert_eq!(report["trial"], json!({"mode": "shadow", "version": 2}));
    assert_eq!(report["compared"], 1, "{report}");
    assert_eq!(report["examples"][0]["routing_key"], "a", "{report}");
    assert_eq!(report, admin.plugin_shadow("trial").await.unwrap());

    let error = |reply: &HttpReply| (reply.status, reply.json()["error"]["code"].clone());
    for query in [
        "shadow=yes",
        "canary=abc",
        "canary=NaN",
        "canary=0",
        "canary=150",
        "shadow=true&canary=10",
        "shadow=true&auto_rollback=true",
        "canary=10&auto_rollback=true",
    ] {
        let path = format!("/api/plugins/trial/versions?{query}");
        let refused = upload(&b, &path, bundled("topic")).await;
        assert_eq!(
            error(&refused),
            (400, json!("invalid_field")),
            "{query}: {}",
            refused.body
        );
    }
    let trial_of = |plugins: &Value| {
        let list = plugins["plugins"].as_array().unwrap();
        let p = list.iter().find(|p| p["name"] == "trial").unwrap();
        (p["active_version"].clone(), p["trial"].clone())
    };
    let (active, trial) = trial_of(&admin.list_plugins().await.unwrap());
    assert_eq!(active, 1, "refused deploys change nothing");
    assert_eq!(trial, json!({"mode": "shadow", "version": 2}));

    let canary = ok(&upload(
        &b,
        "/api/plugins/trial/versions?canary=25",
        bundled("topic"),
    )
    .await);
    assert_eq!(canary["trial"], json!({"mode": "canary", "percent": 25.0}));
    let (active, trial) = trial_of(&admin.list_plugins().await.unwrap());
    assert_eq!(active, 1);
    assert_eq!(trial["mode"], "canary", "{trial}");
    assert_eq!(trial["version"], canary["version"], "{trial}");

    let dropped = ok(&http(addr, "POST", "/api/plugins/trial/rollback", None).await);
    assert_eq!(dropped["dropped"], canary["version"], "{dropped}");
    assert_eq!(dropped["version"], 1, "{dropped}");
    let (active, trial) = trial_of(&admin.list_plugins().await.unwrap());
    assert_eq!((active, trial), (json!(1), Value::Null));
}

/// `GET /api/rates`: what the broker's sampler counted per interval in the vhost asked
/// for, so the page's chart starts filled.
#[tokio::test]
async fn the_broker_keeps_recent_rates_per_vhost() {
    let b = HttpBroker::start().await;
    let addr = b.addr();
    let admin = b.client().await;
    admin.add_vhost("quiet").await.unwrap();
    admin
        .set_permissions(common::all_permissions("guest", "quiet"))
        .await
        .unwrap();
    ok(&http(addr, "PUT", "/api/queues/jobs", Some("{}")).await);
    for i in 0..25 {
        let message = format!(r#"{{"routing_key": "jobs", "body": "{i}"}}"#);
        let path = "/api/exchanges/amq.default/publish";
        ok(&http(addr, "POST", path, Some(&message)).await);
    }
    let taken = r#"{"count": 10, "requeue": false}"#;
    ok(&http(addr, "POST", "/api/queues/jobs/get", Some(taken)).await);
    let total = |rates: &Value, field: &str| -> u64 {
        let samples = rates["samples"].as_array().unwrap();
        samples.iter().map(|s| s[field].as_u64().unwrap()).sum()
    };
    // Sampled every 5 s: the counts show up within two intervals.
    let rates = wait_for(|| async {
        let rates = ok(&http(addr, "GET", "/api/rates", None).await);
        (total(&rates, "published") == 25 && total(&rates, "acked") == 10).then_some(rates)
    })
    .await;
    assert_eq!(rates["interval_ms"], 5000);
    assert_eq!(total(&rates, "delivered"), 10);
    let samples = rates["samples"].as_array().unwrap();
    assert!(
        samples
            .windows(2)
            .all(|w| w[0]["t"].as_u64() < w[1]["t"].as_u64())
    );
    let quiet = ok(&http(addr, "GET", "/api/rates?vhost=quiet", None).await);
    assert_eq!(total(&quiet, "published"), 0, "{quiet}");
    let unknown = http(addr, "GET", "/api/rates?vhost=nowhere", None).await;
    assert_eq!(unknown.status, 403, "{}", unknown.body);
}
