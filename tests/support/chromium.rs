//! A headless chromium driven over the Chrome DevTools Protocol with the WebSocket client
//! the project already uses: the browser tests' (tests/browser*.rs) shared part.
//!
//! Without chromium (`apt-get install chromium`) a test is skipped, with a message;
//! `REQUIRE_BROWSER=1` (`.ci/run` sets it) turns the skip into a failure.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// How long a DevTools reply or a page condition may take.
pub const WAIT: Duration = Duration::from_secs(10);

pub fn chromium_path() -> Option<String> {
    let path = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    std::path::Path::new(&path).exists().then_some(path)
}

/// A headless chromium, killed on drop.
pub struct Chromium {
    child: Child,
    _profile: tempfile::TempDir,
    ws_url: String,
}

impl Chromium {
    pub fn launch(path: &str) -> Chromium {
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
pub struct Page {
    ws: Ws,
    session: String,
    next_id: u64,
    /// Uncaught exceptions the page threw (`Runtime.exceptionThrown`).
    pub exceptions: Vec<Value>,
}

impl Page {
    pub async fn open(browser: &Chromium) -> Page {
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

    pub async fn browser_call(&mut self, method: &str, params: Value) -> Value {
        self.send(json!({"method": method, "params": params})).await
    }

    pub async fn call(&mut self, method: &str, params: Value) -> Value {
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
    pub async fn eval(&mut self, expression: &str) -> Value {
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
    pub async fn wait_until(&mut self, what: &str, expression: &str) {
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

/// Chromium's path, or `None` after saying the test is skipped (a failure instead with
/// `REQUIRE_BROWSER`).
pub fn chromium_or_skip() -> Option<String> {
    let found = chromium_path();
    if found.is_none() {
        assert!(
            std::env::var_os("REQUIRE_BROWSER").is_none(),
            "REQUIRE_BROWSER is set but chromium is not installed"
        );
        eprintln!(
            "SKIPPED: chromium not found at /usr/bin/chromium (or $CHROMIUM); \
             install it with `apt-get install chromium` (`.ci/run` does)"
        );
    }
    found
}

/// Fills the page's form `#id` (inputs and selects by name; `true`/`false` check boxes)
/// and submits it as a click on its button would.
pub fn submit_form(id: &str, fields: &[(&str, &str)]) -> String {
    let mut js = format!("(() => {{ const f = document.getElementById('{id}');");
    for (name, value) in fields {
        let value = serde_json::to_string(value).unwrap();
        js.push_str(&format!(
            "{{ const i = f.elements['{name}']; \
             if (i.type === 'checkbox') i.checked = {value} === 'true'; else i.value = {value}; }}"
        ));
    }
    js.push_str("f.requestSubmit(); return true; })()");
    js
}

/// Picks `file` in the deploy form's file input, as the file dialog would.
pub async fn choose_file(page: &mut Page, file: &std::path::Path) {
    let input = page
        .call(
            "Runtime.evaluate",
            json!({"expression": "document.querySelector('#deploy input[name=file]')"}),
        )
        .await;
    let object = input["result"]["objectId"].clone();
    page.call(
        "DOM.setFileInputFiles",
        json!({"files": [file.display().to_string()], "objectId": object}),
    )
    .await;
}

/// The management page at `http_addr`, logged in as guest (the browser sends HTTP Basic
/// with every request, as after its login prompt), shown ready, with `window.confirm`
/// answering yes as the operator would.
pub async fn open_management_page(browser: &Chromium, http_addr: std::net::SocketAddr) -> Page {
    let mut page = Page::open(browser).await;
    let basic = broker::client::credentials::basic_header("guest", "guest");
    page.call("Network.enable", json!({})).await;
    page.call(
        "Network.setExtraHTTPHeaders",
        json!({"headers": {"Authorization": basic}}),
    )
    .await;
    let url = format!("http://{http_addr}/");
    page.call("Page.navigate", json!({"url": url})).await;
    page.wait_until(
        "the broker as ready",
        "document.getElementById('status')?.classList.contains('ok') === true",
    )
    .await;
    page.eval("window.confirm = () => true, true").await;
    page
}
