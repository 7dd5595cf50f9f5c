//! The management page in a real headless browser (Debian's chromium), driven over the
//! Chrome DevTools Protocol with the WebSocket client the project already uses: the page
//! loads, shows a queue once something is published to it, and its requeue button moves a
//! dead letter back; its login form opens a session whose cookie scripts cannot read, the
//! page shows the vhost it is asked for, and logging out ends the session; every action of
//! its forms (declare, deploy by upload, bind, route, publish, roll back, get, delete) does
//! what it says on the broker, and its rate chart starts from the broker's history. Also
//! saves a screenshot to `target/tmp/management-page.png`.
//!
//! Skipped, with a message, when chromium is not installed (`apt-get install chromium`;
//! `.ci/run` installs it and sets `REQUIRE_BROWSER=1`, which turns the skip into a failure).

#[path = "support/chromium.rs"]
mod chromium;
mod common;

use std::time::Duration;

use base64::Engine as _;
use broker::protocol::Binding;
use broker::{Client, QueueOptions};
use chromium::{Chromium, Page, choose_file, chromium_or_skip, submit_form};
use common::*;
use serde_json::json;

#[tokio::test]
async fn the_management_page_shows_queues_and_requeues_dead_letters() {
    let Some(chromium) = chromium_or_skip() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let broker = start_with_http(dir.path()).await;
    let page_url = format!("http://{}/", broker.http_addr().unwrap());
    let browser = Chromium::launch(&chromium);
    let mut page = Page::open(&browser).await;
    // The page wants a login (HTTP Basic): the browser sends guest's with every request,
    // as it would after its login prompt.
    let basic = broker::client::credentials::basic_header("guest", "guest");
    page.call("Network.enable", json!({})).await;
    page.call(
        "Network.setExtraHTTPHeaders",
        json!({"headers": {"Authorization": basic}}),
    )
    .await;
    page.call("Page.navigate", json!({"url": page_url})).await;
    page.wait_until(
        "the broker as ready",
        "document.getElementById('status')?.classList.contains('ok') === true",
    )
    .await;
    let orders_row = "document.querySelector('tr[data-queue=\"orders\"]')";
    assert_eq!(page.eval(&format!("{orders_row} === null")).await, true);

    // A queue appears once something is published to it.
    let c = Client::connect(&broker.url()).await.unwrap();
    c.confirm_select().await.unwrap();
    c.declare_queue("orders", QueueOptions::durable())
        .await
        .unwrap();
    c.declare_queue("audit", QueueOptions::durable())
        .await
        .unwrap();
    c.declare_exchange("events", "topic", true, Default::default())
        .await
        .unwrap();
    for (queue, key) in [("orders", "order.*"), ("audit", "#")] {
        c.bind(Binding {
            exchange: "events".into(),
            queue: queue.into(),
            key: key.into(),
            arguments: Default::default(),
        })
        .await
        .unwrap();
    }
    let mut m = persistent("order.created", r#"{"order": 42, "total": "19.90"}"#);
    m.exchange = "events".into();
    m.properties.message_id = Some("order-42".into());
    c.publish(m, false).await.unwrap();
    page.wait_until(
        "the orders queue with one ready message",
        &format!("{orders_row}?.querySelector('[data-field=ready]')?.textContent === '1'"),
    )
    .await;
    page.wait_until(
        "the events exchange in the graph",
        "document.querySelector('#graph [data-exchange=\"events\"]') !== null",
    )
    .await;

    // Reject it without requeue: it lands in orders.dlq, where the page offers requeue.
    let mut sub = c.consume("orders", 1).await.unwrap();
    let d = next(&mut sub).await;
    c.reject(d.delivery_tag, false).unwrap();
    c.cancel(&sub.consumer_tag).await.unwrap();
    let button =
        "document.querySelector('[data-dlq=\"orders.dlq\"] button[data-requeue=\"order-42\"]')";
    page.wait_until(
        "the dead letter's requeue button",
        &format!("{button} !== null"),
    )
    .await;
    assert_eq!(
        page.eval("document.querySelector('[data-dlq=\"orders.dlq\"] .reason').textContent")
            .await,
        "rejected"
    );

    // Some traffic for the rate chart, then a screenshot with everything on it.
    for i in 0..30 {
        let mut m = persistent("audit.login", &format!("login {i}"));
        m.exchange = "events".into();
        c.publish(m, false).await.unwrap();
        // Spread over time for the rate chart (not synchronisation).
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Lets the page's rate chart draw the traffic before the screenshot (no assertion).
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let shot = page
        .call("Page.captureScreenshot", json!({"format": "png"}))
        .await;
    let png = base64::engine::general_purpose::STANDARD
        .decode(shot["data"].as_str().unwrap())
        .unwrap();
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("management-page.png");
    std::fs::write(&path, png).unwrap();
    eprintln!("screenshot: {}", path.display());

    // Click requeue: the dead letter moves back to orders.
    page.eval(&format!("{button}.click(), true")).await;
    page.wait_until(
        "the DLQ emptied",
        "document.querySelector('[data-dlq=\"orders.dlq\"]') === null",
    )
    .await;
    page.wait_until(
        "the message back in orders",
        &format!("{orders_row}?.querySelector('[data-field=ready]')?.textContent === '1'"),
    )
    .await;
    assert_eq!(c.queue_info("orders.dlq").await.unwrap().ready, 0);
    let back = c.peek_queue("orders", 10).await.unwrap();
    assert_eq!(back.len(), 1);
    assert_eq!(
        back[0].message.properties.message_id.as_deref(),
        Some("order-42")
    );

    // A deep durable queue says how many of its ready messages are only on disk.
    let mut arguments = broker::Headers::new();
    arguments.insert("max_in_memory_length".into(), json!(2));
    let deep = QueueOptions {
        durable: true,
        arguments,
        ..Default::default()
    };
    c.declare_queue("backlog", deep).await.unwrap();
    for i in 0..6 {
        c.publish(common::persistent("backlog", &i.to_string()), false)
            .await
            .unwrap();
    }
    let paged_out = c.queue_info("backlog").await.unwrap().paged_out;
    assert!(paged_out > 0);
    page.wait_until(
        "the backlog queue's on-disk count",
        &format!(
            "[...document.querySelectorAll('tr[data-queue=\"backlog\"] .tag')]\
             .some(t => t.textContent === '{paged_out} on disk')"
        ),
    )
    .await;

    assert!(
        page.exceptions.is_empty(),
        "the page threw: {:?}",
        page.exceptions
    );
    drop(page);
    drop(browser);
    broker.shutdown().await;
}

#[tokio::test]
async fn the_page_logs_in_with_its_form_shows_a_vhost_and_logs_out() {
    let Some(chromium) = chromium_or_skip() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let broker = start_with_http(dir.path()).await;
    let admin = Client::connect(&broker.url()).await.unwrap();
    admin.add_vhost("prod").await.unwrap();
    admin
        .set_permissions(all_permissions("guest", "prod"))
        .await
        .unwrap();
    admin
        .declare_queue("root-orders", QueueOptions::durable())
        .await
        .unwrap();
    let prod_url = broker::client::credentials::with_vhost(&broker.url(), "prod");
    let prod = Client::connect(&prod_url).await.unwrap();
    prod.declare_queue("prod-orders", QueueOptions::durable())
        .await
        .unwrap();
    let base = format!("http://{}", broker.http_addr().unwrap());
    let browser = Chromium::launch(&chromium);
    let mut page = Page::open(&browser).await;
    page.call("Network.enable", json!({})).await;

    // No session: the page sends the browser to the form; a wrong password keeps it there.
    let url = format!("{base}/?vhost=prod");
    page.call("Page.navigate", json!({"url": url})).await;
    page.wait_until(
        "the login form",
        "location.pathname === '/login' && document.querySelector('form.login') !== null",
    )
    .await;
    let submit = |user: &str, password: &str| {
        format!(
            "document.querySelector('input[name=user]').value = '{user}';\
             document.querySelector('input[name=password]').value = '{password}';\
             document.querySelector('form.login').submit(), true"
        )
    };
    page.eval(&submit("guest", "nope")).await;
    page.wait_until(
        "the form saying the password was wrong",
        "document.querySelector('.error')?.textContent === 'Invalid user name or password.'",
    )
    .await;

    // The right password: the page, working, with a session cookie scripts cannot see.
    page.eval(&submit("guest", "guest")).await;
    page.wait_until(
        "the page, logged in",
        "location.pathname === '/' && \
         document.getElementById('status')?.classList.contains('ok') === true",
    )
    .await;
    assert_eq!(page.eval("document.cookie").await, json!(""));
    let cookies = page.call("Network.getCookies", json!({})).await;
    let session = cookies["cookies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "broker_session")
        .expect("the session cookie")
        .clone();
    assert_eq!(session["httpOnly"], true, "{session}");
    assert_eq!(session["sameSite"], "Strict", "{session}");
    assert_eq!(session["path"], "/", "{session}");

    // The vhost the URL names: its queues only, and chosen in the list.
    page.call("Page.navigate", json!({"url": url})).await;
    page.wait_until(
        "prod's queue",
        "document.querySelector('tr[data-queue=\"prod-orders\"]') !== null",
    )
    .await;
    assert_eq!(
        page.eval("document.querySelector('tr[data-queue=\"root-orders\"]') === null")
            .await,
        json!(true)
    );
    assert_eq!(
        page.eval("document.getElementById('vhost').value").await,
        json!("prod")
    );

    // Log out: back to the form, the cookie gone, and the page wants a login again.
    page.eval("document.querySelector('form.logout button').click(), true")
        .await;
    page.wait_until("the login form again", "location.pathname === '/login'")
        .await;
    let cookies = page.call("Network.getCookies", json!({})).await;
    let left = cookies["cookies"].as_array().unwrap();
    assert!(
        !left.iter().any(|c| c["name"] == "broker_session"),
        "{left:?}"
    );
    let token = session["value"].as_str().unwrap();
    let cookie = format!("broker_session={token}");
    let reused = http_with_headers(
        broker.http_addr().unwrap(),
        "GET",
        "/api/queues",
        None,
        &[("Cookie", &cookie), ("Authorization", "none")],
    )
    .await;
    assert_eq!(reused.status, 401, "the ended session opens nothing");
    assert!(page.exceptions.is_empty(), "{:?}", page.exceptions);
}

fn active_version(plugins: &serde_json::Value, name: &str) -> Option<u64> {
    let list = plugins["plugins"].as_array()?;
    list.iter().find(|p| p["name"] == name)?["active_version"].as_u64()
}

/// Every action of the page, clicked and typed in the browser, checked on the broker
/// through its own API: declare, deploy by upload, bind, route, publish, roll back, get
/// with requeue and with ack, delete; and the rate chart filled from the broker's history.
#[tokio::test]
async fn the_page_declares_deploys_binds_routes_publishes_gets_and_deletes() {
    let Some(chromium) = chromium_or_skip() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let broker = start_with_http(dir.path()).await;
    let http_addr = broker.http_addr().unwrap();
    let c = Client::connect(&broker.url()).await.unwrap();
    let wasm = |name: &str| {
        let bytes = broker::plugin::STANDARD_EXCHANGES
            .iter()
            .find(|(n, _)| *n == name)
            .unwrap()
            .1;
        let path = dir.path().join(format!("{name}.wasm"));
        std::fs::write(&path, bytes).unwrap();
        path
    };
    let (v1, v2) = (wasm("direct"), wasm("fanout"));
    let browser = Chromium::launch(&chromium);
    let mut page = Page::open(&browser).await;
    let basic = broker::client::credentials::basic_header("guest", "guest");
    page.call("Network.enable", json!({})).await;
    page.call(
        "Network.setExtraHTTPHeaders",
        json!({"headers": {"Authorization": basic}}),
    )
    .await;
    page.call(
        "Page.navigate",
        json!({"url": format!("http://{http_addr}/")}),
    )
    .await;
    page.wait_until(
        "the broker as ready",
        "document.getElementById('status')?.classList.contains('ok') === true",
    )
    .await;
    page.eval("window.confirm = () => true, true").await;

    // Declare two queues.
    for queue in ["jobs", "other"] {
        page.eval(&submit_form(
            "declare-queue",
            &[("queue", queue), ("durable", "true")],
        ))
        .await;
        let row = format!("document.querySelector('tr[data-queue=\"{queue}\"]') !== null");
        page.wait_until("the declared queue", &row).await;
    }
    assert!(c.queue_info("jobs").await.unwrap().durable);

    // Deploy plugin `flip` by uploading a .wasm.
    choose_file(&mut page, &v1).await;
    page.eval(&submit_form("deploy", &[("name", "flip")])).await;
    page.wait_until(
        "the deployed plugin",
        "document.querySelector('tr[data-plugin=\"flip\"]') !== null",
    )
    .await;
    assert_eq!(
        active_version(&c.list_plugins().await.unwrap(), "flip"),
        Some(1)
    );

    // Declare an exchange of that type, chosen from the deployed plugins, and bind.
    page.wait_until(
        "flip among the exchange types",
        "[...document.querySelector('#declare-exchange select').options].some(o => o.value === 'flip')",
    )
    .await;
    let declare = [("exchange", "live"), ("type", "flip"), ("durable", "true")];
    page.eval(&submit_form("declare-exchange", &declare)).await;
    page.wait_until(
        "the exchange in the graph",
        "document.querySelector('#graph [data-exchange=\"live\"]') !== null",
    )
    .await;
    let exchanges = c.list_exchanges().await.unwrap().exchanges;
    let live = exchanges.iter().find(|x| x.exchange == "live").unwrap();
    assert_eq!((live.kind.as_str(), live.durable), ("flip", true));
    for (queue, key) in [("jobs", "a"), ("other", "b")] {
        let bind = [("exchange", "live"), ("queue", queue), ("key", key)];
        page.eval(&submit_form("bind", &bind)).await;
        let edge = format!(
            "[...document.querySelectorAll('#graph .key')].some(k => k.textContent === '{key}')"
        );
        page.wait_until("the binding in the graph", &edge).await;
    }
    let bindings = c.list_bindings().await.unwrap();
    assert!(bindings.iter().any(|b| b.queue == "jobs" && b.key == "a"));

    // Where would key `a` go? Version 1 (direct) decides: to jobs only.
    let route = |version: u64, queues: &str| {
        format!(
            "document.getElementById('route-result').dataset.version === '{version}' && \
             document.getElementById('route-result').dataset.queues === '{queues}'"
        )
    };
    page.eval(&submit_form(
        "route",
        &[("exchange", "live"), ("routing_key", "a")],
    ))
    .await;
    page.wait_until("the route by version 1", &route(1, "jobs"))
        .await;
    assert_eq!(
        c.queue_info("jobs").await.unwrap().ready,
        0,
        "route only shows"
    );

    // Publish from the page: stored in jobs.
    let publish = [
        ("exchange", "live"),
        ("routing_key", "a"),
        ("body", "hello from the page"),
        ("headers", r#"{"tier": "vip"}"#),
    ];
    page.eval(&submit_form("publish", &publish)).await;
    page.wait_until(
        "the publish result",
        "document.getElementById('publish-result').dataset.routed === 'true'",
    )
    .await;
    let stored = c.peek_queue("jobs", 10).await.unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(&stored[0].message.body[..], b"hello from the page");
    assert_eq!(stored[0].message.headers["tier"], "vip");
    assert!(stored[0].message.properties.persistent);

    // Version 2 (fanout) by upload: the same message would now reach both queues.
    choose_file(&mut page, &v2).await;
    page.eval(&submit_form("deploy", &[("name", "flip")])).await;
    page.wait_until(
        "flip's roll back button",
        "document.querySelector('button[data-rollback=\"flip\"]') !== null",
    )
    .await;
    assert_eq!(
        active_version(&c.list_plugins().await.unwrap(), "flip"),
        Some(2)
    );
    page.eval(&submit_form(
        "route",
        &[("exchange", "live"), ("routing_key", "a")],
    ))
    .await;
    page.wait_until("the route by version 2", &route(2, "jobs,other"))
        .await;

    // Roll back with one click: version 1 again.
    page.eval("document.querySelector('button[data-rollback=\"flip\"]').click(), true")
        .await;
    wait_for(|| async {
        let plugins = c.list_plugins().await.unwrap();
        (active_version(&plugins, "flip") == Some(1)).then_some(())
    })
    .await;

    // Get with requeue: shown, and still in the queue; with ack: gone.
    let get = |mode: &'static str| [("queue", "jobs"), ("count", "5"), ("mode", mode)];
    page.eval(&submit_form("get", &get("requeue"))).await;
    page.wait_until(
        "the message got",
        "[...document.querySelectorAll('#get-result [data-got] .body')]\
         .some(b => b.textContent === 'hello from the page')",
    )
    .await;
    let jobs = c.queue_info("jobs").await.unwrap();
    assert_eq!((jobs.ready, jobs.unacked), (1, 0), "requeued");
    page.eval("document.getElementById('get-result').replaceChildren(), true")
        .await;
    page.eval(&submit_form("get", &get("ack"))).await;
    page.wait_until(
        "the message got again",
        "document.querySelector('#get-result [data-got]') !== null",
    )
    .await;
    let jobs = c.queue_info("jobs").await.unwrap();
    assert_eq!((jobs.ready, jobs.unacked), (0, 0), "acked");

    // Delete a queue and the exchange.
    page.eval(&submit_form(
        "delete",
        &[("kind", "queues"), ("name", "other")],
    ))
    .await;
    page.wait_until(
        "the queue gone",
        "document.querySelector('tr[data-queue=\"other\"]') === null",
    )
    .await;
    assert!(c.queue_info("other").await.is_err());
    page.eval(&submit_form(
        "delete",
        &[("kind", "exchanges"), ("name", "live")],
    ))
    .await;
    page.wait_until(
        "the exchange gone",
        "document.querySelector('#graph [data-exchange=\"live\"]') === null",
    )
    .await;
    let exchanges = c.list_exchanges().await.unwrap().exchanges;
    assert!(exchanges.iter().all(|x| x.exchange != "live"));

    // The broker's rate history (sampled every 5 s) has the publish: a page opened now
    // starts its chart from it.
    wait_for(|| async {
        let rates = http(http_addr, "GET", "/api/rates", None).await.json();
        let samples = rates["samples"].as_array().cloned().unwrap_or_default();
        samples.iter().any(|s| s["published"] != 0).then_some(())
    })
    .await;
    page.eval("document.body.dataset.before = 'reload', true")
        .await;
    page.call("Page.reload", json!({})).await;
    page.wait_until(
        "the chart seeded from the broker",
        "document.body?.dataset.before === undefined && \
         document.getElementById('rates')?.dataset.seeded > 0",
    )
    .await;
    let seeded = "state.history.slice(0, document.getElementById('rates').dataset.seeded)";
    let with_publish = format!("{seeded}.some(p => p.publish > 0)");
    assert_eq!(page.eval(&with_publish).await, json!(true));
    assert!(page.exceptions.is_empty(), "{:?}", page.exceptions);
}
