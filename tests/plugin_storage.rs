//! Plugin storage does not grow with every deploy: `prune_plugin` (and `broker plugin
//! prune`) deletes old versions, a retention setting does it after each deploy, and what
//! is deleted stays deleted across a restart — never the active version or its rollback
//! target.

mod common;

use broker::protocol::ErrorCode;
use broker::{Broker, Client, Config};
use common::{FRAME_LIMIT, run_cli};

fn bundled(name: &str) -> &'static [u8] {
    broker::plugin::STANDARD_EXCHANGES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, wasm)| *wasm)
        .unwrap()
}

/// Deploys `count` new versions of `name`, alternating two different modules.
async fn deploy_versions(c: &Client, name: &str, count: usize) {
    for i in 0..count {
        let wasm = bundled(if i % 2 == 0 { "direct" } else { "fanout" });
        c.deploy_plugin(name, wasm).await.unwrap();
    }
}

/// (version, active) of every stored version of `name`.
async fn history(c: &Client, name: &str) -> Vec<(u64, bool)> {
    c.plugin_history(name).await.unwrap()["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["version"].as_u64().unwrap(), v["active"] == true))
        .collect()
}

async fn start(dir: &std::path::Path, keep: Option<u64>) -> Broker {
    let mut config = Config::new(dir);
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.max_frame_bytes = FRAME_LIMIT;
    config.keep_plugin_versions = keep;
    Broker::start(config).await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn pruning_deletes_old_versions_for_good() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path(), None).await;
    let c = Client::connect(&broker.url()).await.unwrap();
    deploy_versions(&c, "router", 5).await;
    assert_eq!(history(&c, "router").await.len(), 5);

    // Rolled back to 3: kept are the newest (5), the active (3) and its rollback target (2).
    c.rollback_plugin("router", Some(3)).await.unwrap();
    let pruned = c.prune_plugin("router", 1).await.unwrap();
    assert_eq!(pruned["pruned"], serde_json::json!([1, 4]));
    assert_eq!(
        history(&c, "router").await,
        [(2, false), (3, true), (5, false)]
    );
    let err = c.rollback_plugin("router", Some(4)).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::PluginNotFound));
    let err = c.prune_plugin("router", 0).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::InvalidField));
    let err = c.prune_plugin("direct", 1).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::PluginNotFound));

    // The CLI does the same.
    c.rollback_plugin("router", Some(5)).await.unwrap();
    let (ok, out, err) = run_cli(&["plugin", "prune", "router", "--keep", "1"], &broker.url());
    assert!(ok, "{err}");
    assert!(out.contains("deleted versions 2"), "{out}");
    assert_eq!(history(&c, "router").await, [(3, false), (5, true)]);

    // After a restart the deleted versions are gone from the store too, the active one
    // is still active, and new versions keep counting up.
    drop(c);
    broker.shutdown().await;
    let broker = start(dir.path(), None).await;
    let c = Client::connect(&broker.url()).await.unwrap();
    assert_eq!(history(&c, "router").await, [(3, false), (5, true)]);
    c.rollback_plugin("router", None).await.unwrap();
    assert_eq!(history(&c, "router").await, [(3, true), (5, false)]);
    let next = c.deploy_plugin("router", bundled("headers")).await.unwrap();
    assert_eq!(next["version"], 6);
}

#[tokio::test]
async fn a_retention_setting_prunes_after_each_deploy() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path(), Some(2)).await;
    let c = Client::connect(&broker.url()).await.unwrap();
    deploy_versions(&c, "router", 4).await;
    assert_eq!(history(&c, "router").await, [(3, false), (4, true)]);
    deploy_versions(&c, "other", 1).await;
    assert_eq!(history(&c, "other").await, [(1, true)]);
    drop(c);
    broker.shutdown().await;
    let broker = start(dir.path(), None).await;
    let c = Client::connect(&broker.url()).await.unwrap();
    assert_eq!(history(&c, "router").await, [(3, false), (4, true)]);
}

/// A plugin nothing uses any more is deleted with every version (`delete_plugin`,
/// `broker plugin delete`): refused while an exchange is of its type, gone for good after,
/// also across a restart; bundled types cannot be deleted.
#[tokio::test(flavor = "multi_thread")]
async fn a_plugin_nothing_uses_is_deleted_with_its_versions() {
    let dir = tempfile::tempdir().unwrap();
    let b = start(dir.path(), None).await;
    let c = Client::connect(&b.url()).await.unwrap();
    deploy_versions(&c, "custom", 3).await;
    c.declare_exchange("x", "custom", true, Default::default())
        .await
        .unwrap();
    let err = c.delete_plugin("custom").await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::PreconditionFailed), "{err}");
    assert!(err.to_string().contains("exchange `x`"), "{err}");
    assert_eq!(history(&c, "custom").await.len(), 3);

    c.delete_exchange("x").await.unwrap();
    let (ok, out, err) = run_cli(&["plugin", "delete", "custom"], &b.url());
    assert!(ok, "{err}");
    assert!(
        out.contains("plugin custom deleted with versions [1,2,3]"),
        "{out}"
    );
    let err = c
        .declare_exchange("y", "custom", false, Default::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::UnknownExchangeType), "{err}");
    let err = c.plugin_history("custom").await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::PluginNotFound), "{err}");
    let err = c.delete_plugin("topic").await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::PluginNotFound), "{err}");

    c.close().await;
    b.shutdown().await;
    let b = start(dir.path(), None).await;
    let c = Client::connect(&b.url()).await.unwrap();
    let plugins = c.list_plugins().await.unwrap();
    let names: Vec<&str> = plugins["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert!(!names.contains(&"custom"), "{names:?}");
    let err = c
        .declare_exchange("y", "custom", false, Default::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::UnknownExchangeType), "{err}");
    // The name can be deployed anew, from version 1.
    deploy_versions(&c, "custom", 1).await;
    assert_eq!(history(&c, "custom").await, [(1, true)]);
    c.close().await;
    b.shutdown().await;
}
