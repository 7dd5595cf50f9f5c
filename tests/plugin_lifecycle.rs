//! Plugin versions end to end: deploy, a refused upload keeping the active version,
//! rollback, history, and a restart restoring exactly the active version.

mod common;
#[path = "support/hostile.rs"]
mod hostile;

use broker::protocol::{Binding, ErrorCode};
use broker::{Client, Headers, Message, QueueOptions};
use common::TestBroker;

/// Publishes key `boom` to exchange `ex`: v1 (the `trap` plugin) fails on it, v2 (the
/// `spin` plugin, which only misbehaves on `spin`) routes it nowhere.
async fn boom(c: &Client) -> Result<(), ErrorCode> {
    let mut m = Message::text("boom", "x");
    m.exchange = "ex".into();
    c.publish(m, false).await.map_err(|e| e.code().unwrap())
}

fn versions(history: &serde_json::Value) -> Vec<(u64, bool)> {
    history["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["version"].as_u64().unwrap(), v["active"] == true))
        .collect()
}

#[tokio::test]
async fn deploy_refuse_rollback_and_restore_after_restart() {
    let mut b = TestBroker::start().await;
    let c = b.client().await;
    let (v1, v2) = (hostile::plugin("trap"), hostile::plugin("spin"));
    let deployed = c.deploy_plugin("router", &v1).await.unwrap();
    assert_eq!(deployed["version"], 1);
    assert_eq!(deployed["hash"].as_str().unwrap().len(), 64, "sha-256 hex");
    c.declare_exchange("ex", "router", true, Headers::new())
        .await
        .unwrap();
    c.declare_queue("q", QueueOptions::durable()).await.unwrap();
    let binding = Binding {
        exchange: "ex".into(),
        queue: "q".into(),
        key: "k".into(),
        arguments: Headers::new(),
    };
    c.bind(binding).await.unwrap();
    c.confirm_select().await.unwrap();
    assert_eq!(
        boom(&c).await,
        Err(ErrorCode::PluginError),
        "v1 traps on boom"
    );

    let err = c
        .deploy_plugin("router", b"half a module")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::InvalidPlugin));
    assert_eq!(
        versions(&c.plugin_history("router").await.unwrap()),
        [(1, true)]
    );
    assert_eq!(
        boom(&c).await,
        Err(ErrorCode::PluginError),
        "v1 still active"
    );

    assert_eq!(c.deploy_plugin("router", &v2).await.unwrap()["version"], 2);
    assert_eq!(
        boom(&c).await,
        Ok(()),
        "v2 routes the live exchange at once"
    );

    assert_eq!(
        c.rollback_plugin("router", None).await.unwrap()["version"],
        1
    );
    assert_eq!(
        boom(&c).await,
        Err(ErrorCode::PluginError),
        "rolled back to v1"
    );
    let history = c.plugin_history("router").await.unwrap();
    assert_eq!(versions(&history), [(1, true), (2, false)]);
    let err = c.rollback_plugin("router", Some(9)).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::PluginNotFound));

    let list = c.list_plugins().await.unwrap();
    let entry = list["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "router")
        .unwrap();
    assert_eq!(entry["active_version"], 1);
    assert!(entry["stats"]["traps"].as_u64().unwrap() >= 2);
    assert!(
        list["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "topic")
    );

    c.close().await;
    b.restart().await;
    let c = b.client().await;
    c.confirm_select().await.unwrap();
    assert_eq!(
        versions(&c.plugin_history("router").await.unwrap()),
        [(1, true), (2, false)]
    );
    assert_eq!(
        boom(&c).await,
        Err(ErrorCode::PluginError),
        "v1 restored, exchange too"
    );
    assert_eq!(
        c.rollback_plugin("router", Some(2)).await.unwrap()["version"],
        2
    );
    assert_eq!(boom(&c).await, Ok(()));
}
