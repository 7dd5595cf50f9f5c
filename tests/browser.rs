//! The management page in a real headless browser (Debian's chromium), driven over the
//! Chrome DevTools Protocol with the WebSocket client the project already uses: the page
//! loads, shows a queue once something is published to it, and its requeue button moves a
//! dead letter back. Also saves a screenshot to `target/tmp/management-page.png`.
//!
//! Skipped, with a message, when chromium is not installed (`apt-get install chromium`;
//! `.ci/run` installs it and sets `REQUIRE_BROWSER=1`, which turns the skip into a failure).

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use broker::protocol::Binding;
use broker::{Client, QueueOptions};
use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message as WsMessage;

fn chromium_path() -> Option<String> {
    let path = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    std::path::Path::new(&path).exists().then_some(path)
}

/// A headless chromium, killed on drop.
struct Chromium {
    child: Child,
    _profile: tempfile::TempDir,
    ws_url: String,
}

impl Chromium {
    fn launch(path: &str) -> Chromium {
        let profile = tempfile::tempdir().unwrap();
        let mut child = Command::new(path)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting chromium");
        let stderr = BufReader::new(child.stderr.take().unwrap());
        let (tx, rx) = std::sync::mpsc::channel();
        // Keep draining stderr so chromium never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in stderr.lines().map_while(Result::ok) {
                if let Some(url) = line.split("DevTools listening on ").nth(1)
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(url.trim().to_owned());
                }
            }
        });
        let ws_url = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("chromium printed its DevTools address");
        Chromium {
            child,
            _profile: profile,
            ws_url,
        }
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A DevTools Protocol session on one page target (flattened sessions over the browser's
/// WebSocket).
struct Page {
    ws: Ws,
    session: String,
    next_id: u64,
    /// Uncaught exceptions the page threw (`Runtime.exceptionThrown`).
    exceptions: Vec<Value>,
}

impl Page {
    async fn open(browser: &Chromium) -> Page {
        let (ws, _) = tokio_tungstenite::connect_async(&browser.ws_url)
            .await
            .expect("connecting to chromium's DevTools");
        let mut page = Page {
            ws,
            session: String::new(),
            next_id: 1,
            exceptions: Vec::new(),
        };
        let target = page
            .browser_call("Target.createTarget", json!({"url": "about:blank"}))
            .await;
        let attached = page
            .browser_call(
                "Target.attachToTarget",
                json!({"targetId": target["targetId"], "flatten": true}),
            )
            .await;
        page.session = attached["sessionId"].as_str().unwrap().to_owned();
        page.call("Runtime.enable", json!({})).await;
        page.call("Page.enable", json!({})).await;
        page.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": 1400, "height": 1250, "deviceScaleFactor": 1, "mobile": false}),
        )
        .await;
        page
    }

    async fn browser_call(&mut self, method: &str, params: Value) -> Value {
        self.send(json!({"method": method, "params": params})).await
    }

    async fn call(&mut self, method: &str, params: Value) -> Value {
        let session = self.session.clone();
        self.send(json!({"method": method, "params": params, "sessionId": session}))
            .await
    }

    async fn send(&mut self, mut command: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        command["id"] = id.into();
        self.ws
            .send(WsMessage::Text(command.to_string().into()))
            .await
            .unwrap();
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let frame = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .expect("a DevTools reply in time")
                .expect("DevTools connection open")
                .unwrap();
            let WsMessage::Text(text) = frame else {
                continue;
            };
            let message: Value = serde_json::from_str(&text).unwrap();
            if message["method"] == "Runtime.exceptionThrown" {
                self.exceptions
                    .push(message["params"]["exceptionDetails"].clone());
            }
            if message["id"] == id {
                assert!(message.get("error").is_none(), "{command}: {message}");
                return message["result"].clone();
            }
        }
    }

    /// Evaluates `expression` in the page and returns its value.
    async fn eval(&mut self, expression: &str) -> Value {
        let result = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
            )
            .await;
        assert!(
            result.get("exceptionDetails").is_none(),
            "`{expression}` threw: {result}"
        );
        result["result"]["value"].clone()
    }

    /// Polls `expression` until it is true (the page polls the API every 1.5 s).
    async fn wait_until(&mut self, what: &str, expression: &str) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while self.eval(expression).await != json!(true) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the page never showed: {what}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test]
async fn the_management_page_shows_queues_and_requeues_dead_letters() {
    let Some(chromium) = chromium_path() else {
        assert!(
            std::env::var_os("REQUIRE_BROWSER").is_none(),
            "REQUIRE_BROWSER is set but chromium is not installed"
        );
        eprintln!(
            "SKIPPED: chromium not found at /usr/bin/chromium (or $CHROMIUM); \
             install it with `apt-get install chromium` (`.ci/run` does)"
        );
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
