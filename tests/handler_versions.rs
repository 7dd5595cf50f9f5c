//! Handler plugin versions end to end: a deployed handler is versioned, attachments move
//! to a new version or stay on the one they run (and `list_handlers` says which).

mod common;
#[path = "support/handlers.rs"]
mod support;

use broker::protocol::ErrorCode;
use broker::{Client, Headers, QueueOptions};
use common::persistent;
use common::run_cli as cli;
use serde_json::Value;
use support::{attach, bundled, handler_row, wait_for};

#[tokio::test]
async fn a_deployed_handler_is_versioned_and_its_attachments_move_to_a_new_version() {
    // Room for a plugin upload in one frame.
    let dir = tempfile::tempdir().unwrap();
    let mut config = broker::Config::new(dir.path());
    config.listen = "127.0.0.1:0".parse().unwrap();
    let b = broker::Broker::start(config).await.unwrap();
    let c = Client::connect(&b.url()).await.unwrap();
    let v1 = c.deploy_plugin("greeter", bundled("flaky")).await.unwrap();
    assert_eq!(v1["version"], 1);
    c.declare_queue("signups", QueueOptions::durable())
        .await
        .unwrap();
    c.attach_handler(attach("signups", "greeter", &[("failures", "0")]))
        .await
        .unwrap();
    c.declare_exchange("events", "direct", true, Headers::new())
        .await
        .unwrap();
    c.bind(broker::protocol::Binding {
        exchange: "events".into(),
        queue: "signups".into(),
        key: "user.signup".into(),
        arguments: Headers::new(),
    })
    .await
    .unwrap();
    c.confirm_select().await.unwrap();
    let signup = || {
        let mut m = persistent("user.signup", "not json");
        m.exchange = "events".into();
        m
    };
    // v1 (flaky, no failures) acks anything.
    c.publish(signup(), false).await.unwrap();
    wait_for(&c, "signups", |q| q.ready + q.unacked == 0).await;
    assert_eq!(
        handler_row(&c, "signups", "greeter").await["plugin_version"],
        1
    );
    assert_eq!(c.queue_info("signups").await.unwrap().dead_lettered, 0);

    // v2 (email-sender) rejects a signup that is not JSON: the attachment runs v2 now.
    c.deploy_plugin("greeter", bundled("email-sender"))
        .await
        .unwrap();
    c.publish(signup(), false).await.unwrap();
    wait_for(&c, "signups", |q| q.dead_lettered == 1).await;
    assert_eq!(
        handler_row(&c, "signups", "greeter").await["plugin_version"],
        2
    );

    // A handler name cannot become an exchange type, and the reverse.
    let err = c
        .deploy_plugin("greeter", bundled("topic"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::InvalidPlugin));
    let err = c
        .deploy_plugin("flaky", bundled("flaky"))
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Some(ErrorCode::InvalidPlugin),
        "bundled names are reserved"
    );
    let plugins = c.list_plugins().await.unwrap();
    let greeter = plugins["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "greeter")
        .unwrap()
        .clone();
    assert_eq!(greeter["kind"], "handler");
    assert_eq!(greeter["active_version"], 2);
    // Which version handled how many messages (each handled one).
    let handled: Vec<(u64, u64)> = greeter["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["version"].as_u64().unwrap(),
                v["messages"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(handled, [(1, 1), (2, 1)]);
}

/// A redeployed handler that refuses one attachment's config: `list_handlers` (and the
/// CLI) report that this attachment stays on the old version and why, while another
/// attachment it accepts moves on; the attachment that stayed keeps working on the old
/// version even after its instance fails.
#[tokio::test]
async fn list_handlers_reports_the_version_each_attachment_runs() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = broker::Config::new(dir.path());
    config.listen = "127.0.0.1:0".parse().unwrap();
    let b = broker::Broker::start(config).await.unwrap();
    let c = Client::connect(&b.url()).await.unwrap();
    // v1 (flaky) accepts both configs; v2 (enrich) requires `exchange`.
    c.deploy_plugin("worker", bundled("flaky")).await.unwrap();
    for queue in ["stays", "moves"] {
        c.declare_queue(queue, QueueOptions::durable())
            .await
            .unwrap();
    }
    // `stays`: the first delivery of every message traps on v1, the second acks.
    c.attach_handler(attach(
        "stays",
        "worker",
        &[("failures", "1"), ("fail_with", "trap")],
    ))
    .await
    .unwrap();
    c.attach_handler(attach(
        "moves",
        "worker",
        &[("failures", "0"), ("exchange", "nowhere")],
    ))
    .await
    .unwrap();
    assert_eq!(
        handler_row(&c, "stays", "worker").await["plugin_version"],
        1
    );

    assert_eq!(
        c.deploy_plugin("worker", bundled("enrich")).await.unwrap()["version"],
        2
    );
    c.confirm_select().await.unwrap();
    c.publish(persistent("stays", "job"), false).await.unwrap();
    c.publish(persistent("moves", "not json"), false)
        .await
        .unwrap();
    // v1 trapped on `stays`' message, then a fresh v1 instance acked its redelivery.
    wait_for(&c, "stays", |q| q.ready + q.unacked == 0).await;
    // v2 rejects what is not a JSON object: `moves` runs v2.
    wait_for(&c, "moves", |q| q.dead_lettered == 1).await;
    let stays = handler_row(&c, "stays", "worker").await;
    assert_eq!(stays["plugin_version"], 1, "{stays}");
    assert_eq!(stays["refused"]["version"], 2, "{stays}");
    let reason = stays["refused"]["reason"].as_str().unwrap();
    assert!(reason.contains("`exchange` is required"), "{reason}");
    assert_eq!(stays["stats"]["failed"], 1, "{stays}");
    assert_eq!(stays["stats"]["acked"], 1, "{stays}");
    assert_eq!(c.queue_info("stays").await.unwrap().dead_lettered, 0);
    let moves = handler_row(&c, "moves", "worker").await;
    assert_eq!(moves["plugin_version"], 2, "{moves}");
    assert_eq!(moves["refused"], Value::Null, "{moves}");

    // Off the test's runtime thread, which also runs the broker the CLI talks to.
    let url = b.url();
    let (ok, out, err) = tokio::task::spawn_blocking(move || cli(&["handler", "list"], &url))
        .await
        .unwrap();
    assert!(ok, "{err}");
    assert!(
        out.contains("version 2 refused this attachment, which stays on version 1"),
        "{out}"
    );

    // Back to v1: the refusal no longer applies.
    c.rollback_plugin("worker", Some(1)).await.unwrap();
    c.publish(persistent("stays", "job"), false).await.unwrap();
    wait_for(&c, "stays", |q| q.ready + q.unacked == 0).await;
    let stays = handler_row(&c, "stays", "worker").await;
    assert_eq!(stays["plugin_version"], 1, "{stays}");
    assert_eq!(stays["refused"], Value::Null, "{stays}");
    c.close().await;
    b.shutdown().await;
}
