//! Issue 17's demo in a real headless browser (Debian's chromium, over the DevTools
//! Protocol): examples/live-page/index.html, opened from disk, with @stomp/stompjs over the
//! broker's WebSocket listener, follows an exchange whose plugin is redeployed.
//!
//! Skipped, with a message, when chromium is not installed; `REQUIRE_BROWSER=1` (`.ci/run`
//! sets it) turns the skip into a failure.

#[path = "support/chromium.rs"]
mod chromium;
mod common;

use broker::Client;
use chromium::{Chromium, Page, chromium_or_skip};
use common::wait_for;
use serde_json::json;

/// Issue 17's demo: examples/live-page/index.html, opened from disk, subscribes over
/// STOMP-over-WebSocket with @stomp/stompjs to the lanes of an exchange whose plugin is
/// redeployed while it is open: it shows a message routed by version 1 (direct: one
/// lane), then one routed by version 2 (fanout: both lanes), without reconnecting.
#[tokio::test]
async fn the_live_page_follows_a_hot_reloaded_plugin_over_stomp() {
    let Some(chromium) = chromium_or_skip() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut config = broker::Config::new(dir.path());
    config.listen = "127.0.0.1:0".parse().unwrap();
    // What a page opened from disk sends as its `Origin`.
    config.allowed_origins = vec!["null".into()];
    let broker = broker::Broker::start(config).await.unwrap();
    let c = Client::connect(&broker.url()).await.unwrap();
    c.confirm_select().await.unwrap();
    let bundled = |name: &str| {
        let found = broker::plugin::STANDARD_EXCHANGES
            .iter()
            .find(|(n, _)| *n == name);
        found.unwrap().1
    };
    c.deploy_plugin("lanes", bundled("direct")).await.unwrap();
    c.declare_exchange("live", "lanes", false, Default::default())
        .await
        .unwrap();
    let page_file = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/live-page/index.html")
        .canonicalize()
        .unwrap();
    let url = format!(
        "file://{}?ws={}/ws&exchange=live&lanes=standard,express",
        page_file.display(),
        broker.url()
    );
    let browser = Chromium::launch(&chromium);
    let mut page = Page::open(&browser).await;
    page.call("Page.navigate", json!({"url": url})).await;
    page.wait_until(
        "the page connected",
        "document.getElementById('status')?.dataset.state === 'connected'",
    )
    .await;
    // Both subscriptions are bound before anything is published.
    wait_for(|| async {
        let bindings = c.list_bindings().await.unwrap();
        (bindings.iter().filter(|b| b.exchange == "live").count() == 2).then_some(())
    })
    .await;
    let connections = c.list_connections().await.unwrap();
    assert!(
        connections
            .iter()
            .any(|c| c.protocol == broker::protocol::WireProtocol::Stomp),
        "{connections:?}"
    );
    let publish = |body: &'static str| {
        let mut m = broker::Message::text("standard", body);
        m.exchange = "live".into();
        c.publish(m, false)
    };
    let in_lane = |lane: &str, body: &str| {
        format!(
            "document.querySelector('[data-lane=\"{lane}\"] li[data-body=\"{body}\"]') !== null"
        )
    };
    publish("order 1").await.unwrap();
    page.wait_until(
        "order 1 in the standard lane",
        &in_lane("standard", "order 1"),
    )
    .await;

    c.deploy_plugin("lanes", bundled("fanout")).await.unwrap();
    publish("order 2").await.unwrap();
    page.wait_until(
        "order 2 in the express lane",
        &in_lane("express", "order 2"),
    )
    .await;
    page.wait_until(
        "order 2 in the standard lane",
        &in_lane("standard", "order 2"),
    )
    .await;
    // Version 1 had sent order 1 to one lane only.
    assert_eq!(
        page.eval(&in_lane("express", "order 1")).await,
        json!(false)
    );
    let received = "document.querySelector('[data-lane=\"express\"]').dataset.received";
    assert_eq!(page.eval(received).await, json!("1"));
    assert!(page.exceptions.is_empty(), "{:?}", page.exceptions);
    drop(page);
    drop(browser);
    broker.shutdown().await;
}
