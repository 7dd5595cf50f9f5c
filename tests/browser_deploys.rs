//! Issue 18 in a real headless browser (Debian's chromium, over the DevTools Protocol, as
//! tests/browser.rs): the management page uploads a `.wasm` as a shadow, shows the
//! shadow's report (checked against `plugin_shadow` through the client), promotes it with
//! one click, uploads a canary and drops it with one click. The broker's state is checked
//! through the client each time, not only the page. Also saves a screenshot of the report
//! to `target/tmp/shadow-report.png`.
//!
//! Skipped, with a message, when chromium is not installed; `REQUIRE_BROWSER=1` (`.ci/run`
//! sets it) turns the skip into a failure.

#[path = "support/chromium.rs"]
mod chromium;
mod common;

use broker::protocol::Binding;
use broker::{Client, QueueOptions};
use chromium::{Chromium, choose_file, chromium_or_skip, open_management_page, submit_form};
use common::*;
use serde_json::{Value, json};

/// `name`'s active version and trial, as `list_plugins` reports them.
async fn versions(c: &Client, name: &str) -> (Value, Value) {
    let plugins = c.list_plugins().await.unwrap();
    let list = plugins["plugins"].as_array().unwrap();
    let p = list.iter().find(|p| p["name"] == name).unwrap();
    (p["active_version"].clone(), p["trial"].clone())
}

/// An outcome of a shadow example as the page writes it: `queue (key), ...`.
fn outcome_text(outcome: &Value) -> String {
    if let Some(error) = outcome["error"].as_str() {
        return format!("failed: {error}");
    }
    let bindings = outcome["bindings"].as_array().unwrap();
    let queues: Vec<String> = bindings
        .iter()
        .map(|b| {
            format!(
                "{} ({})",
                b["queue"].as_str().unwrap(),
                b["key"].as_str().unwrap()
            )
        })
        .collect();
    if queues.is_empty() {
        "none".into()
    } else {
        queues.join(", ")
    }
}

/// Saves what the page shows to `target/tmp/NAME` (for a look; no assertion).
async fn screenshot(page: &mut chromium::Page, name: &str) {
    use base64::Engine as _;
    let shot = page
        .call("Page.captureScreenshot", json!({"format": "png"}))
        .await;
    let png = base64::engine::general_purpose::STANDARD
        .decode(shot["data"].as_str().unwrap())
        .unwrap();
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    std::fs::write(&path, png).unwrap();
    eprintln!("screenshot: {}", path.display());
}

/// Version 1 of `flip` routes as `direct`; version 2 (`fanout`'s bytes), uploaded on the
/// page as a shadow, decides nothing while the page reports its differences; Promote
/// makes it the routing version; a canary (`topic`'s bytes) uploaded on the page is
/// dropped with Drop and version 2 stays active.
#[tokio::test]
async fn the_page_deploys_a_shadow_reports_it_promotes_it_and_drops_a_canary() {
    let Some(chromium) = chromium_or_skip() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let broker = start_with_http(dir.path()).await;
    let c = Client::connect(&broker.url()).await.unwrap();
    c.confirm_select().await.unwrap();
    let bundled = |name: &str| {
        broker::plugin::STANDARD_EXCHANGES
            .iter()
            .find(|(n, _)| *n == name)
            .unwrap()
            .1
    };
    let wasm_file = |name: &str| {
        let path = dir.path().join(format!("{name}.wasm"));
        std::fs::write(&path, bundled(name)).unwrap();
        path
    };
    c.deploy_plugin("flip", bundled("direct")).await.unwrap();
    c.declare_exchange("live", "flip", true, Default::default())
        .await
        .unwrap();
    for queue in ["a", "b"] {
        c.declare_queue(queue, QueueOptions::durable())
            .await
            .unwrap();
        c.bind(Binding {
            exchange: "live".into(),
            queue: queue.into(),
            key: queue.into(),
            arguments: Default::default(),
        })
        .await
        .unwrap();
    }
    let publish = |key: &'static str| {
        let c = &c;
        async move {
            let mut m = persistent(key, "{}");
            m.exchange = "live".into();
            c.publish(m, false).await.unwrap();
        }
    };
    let ready = |queue: &'static str| {
        let c = &c;
        async move { c.queue_info(queue).await.unwrap().ready }
    };

    let browser = Chromium::launch(&chromium);
    let mut page = open_management_page(&browser, broker.http_addr().unwrap()).await;
    let row = "document.querySelector('tr[data-plugin=\"flip\"]')";
    page.wait_until("flip's row", &format!("{row} !== null"))
        .await;

    // Upload version 2 as a shadow: on trial next to version 1, which stays active.
    choose_file(&mut page, &wasm_file("fanout")).await;
    page.eval(&submit_form(
        "deploy",
        &[("name", "flip"), ("mode", "shadow")],
    ))
    .await;
    page.wait_until(
        "flip's shadow version 2",
        &format!(
            "{row}?.querySelector('[data-trial-mode=\"shadow\"]')?.dataset.trialVersion === '2'"
        ),
    )
    .await;
    assert_eq!(
        versions(&c, "flip").await,
        (json!(1), json!({"mode": "shadow", "version": 2}))
    );

    // Messages the two versions route differently: version 1 (direct) decides.
    for key in ["a", "b", "c"] {
        publish(key).await;
    }
    assert_eq!((ready("a").await, ready("b").await), (1, 1));
    // The shadow compares after the publishers are answered.
    let report = wait_for(|| async {
        let report = c.plugin_shadow("flip").await.unwrap();
        (report["differed"] == 3).then_some(report)
    })
    .await;
    assert_eq!(report["compared"], 3, "{report}");

    // The page's report says what the broker's does.
    page.eval(&format!(
        "{row}.querySelector('button[data-shadow-report]').click(), true"
    ))
    .await;
    let examples = "[...document.querySelectorAll('#shadow-body tr[data-example]')]";
    page.wait_until(
        "the shadow report with three differences",
        &format!(
            "document.querySelector('#shadow-body [data-field=differed]')?.textContent === '3' \
             && {examples}.length === 3"
        ),
    )
    .await;
    for field in ["compared", "differed", "shadow_failures", "shadow_skipped"] {
        let shown = page
            .eval(&format!(
                "document.querySelector('#shadow-body [data-field={field}]').textContent"
            ))
            .await;
        assert_eq!(shown, json!(report[field].to_string()), "{field}");
    }
    let rows = page
        .eval(&format!(
            "{examples}.map(r => [...r.cells].slice(1).map(c => c.textContent))"
        ))
        .await;
    let expected: Vec<Value> = report["examples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| {
            json!([
                x["exchange"],
                x["routing_key"],
                "",
                outcome_text(&x["active"]),
                outcome_text(&x["shadow"]),
            ])
        })
        .collect();
    assert_eq!(rows, json!(expected));
    page.eval("document.getElementById('shadow-card').scrollIntoView({block: 'end'}), true")
        .await;
    screenshot(&mut page, "shadow-report.png").await;
    assert_eq!(expected[2][3], "none", "direct sends key c nowhere");
    assert_eq!(expected[2][4], "a (a), b (b)", "fanout sends it to both");

    // Promote with one click: version 2 routes.
    page.eval(&format!(
        "{row}.querySelector('button[data-promote]').click(), true"
    ))
    .await;
    wait_for(|| async { (versions(&c, "flip").await == (json!(2), Value::Null)).then_some(()) })
        .await;
    publish("c").await;
    assert_eq!((ready("a").await, ready("b").await), (2, 2));
    page.wait_until(
        "flip at version 2 without a trial",
        &format!(
            "{row}?.querySelector('[data-trial-mode]') === null && \
             {row}?.querySelector('button[data-rollback]') !== null"
        ),
    )
    .await;

    // Upload version 3 as a canary routing 30 %, then drop it: version 2 stays active.
    choose_file(&mut page, &wasm_file("topic")).await;
    let canary = [("name", "flip"), ("mode", "canary"), ("canary", "30")];
    page.eval(&submit_form("deploy", &canary)).await;
    page.wait_until(
        "flip's canary version 3",
        &format!(
            "{row}?.querySelector('[data-trial-mode=\"canary\"]')?.dataset.trialPercent === '30'"
        ),
    )
    .await;
    assert_eq!(
        versions(&c, "flip").await,
        (
            json!(2),
            json!({"mode": "canary", "percent": 30.0, "version": 3})
        )
    );
    // The report, still open, now counts what the canary routed (the draw picks how many
    // of these ten; the page shows what the broker counted).
    for _ in 0..10 {
        publish("a").await;
    }
    let report = c.plugin_shadow("flip").await.unwrap();
    assert_eq!(report["trial"]["version"], 3, "{report}");
    let canary_routed = report["canary_messages"].to_string();
    page.wait_until(
        "the canary's report",
        &format!(
            "document.querySelector('#shadow-body [data-field=canary_messages]')\
             ?.textContent === '{canary_routed}'"
        ),
    )
    .await;
    assert_eq!(
        ready("a").await,
        12,
        "every message routed once, by one version"
    );
    page.eval(&format!(
        "{row}.querySelector('button[data-drop]').click(), true"
    ))
    .await;
    wait_for(|| async { versions(&c, "flip").await.1.is_null().then_some(()) }).await;
    assert_eq!(versions(&c, "flip").await.0, 2, "the active version stays");
    page.wait_until(
        "the canary gone from the page",
        &format!("{row}?.querySelector('[data-trial-mode]') === null"),
    )
    .await;
    let history = c.plugin_history("flip").await.unwrap();
    assert_eq!(
        history["versions"].as_array().unwrap().len(),
        3,
        "{history}"
    );
    assert!(page.exceptions.is_empty(), "{:?}", page.exceptions);
}
