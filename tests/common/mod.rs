//! Helpers shared by the end-to-end tests: real brokers (in-process or the real binary)
//! on temporary data directories, and a raw WebSocket peer for malformed input.
#![allow(dead_code)] // each test crate uses a different subset

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use broker::protocol::Delivery;
use broker::{Broker, Client, Config, Subscription};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// Generous bound for anything that should happen "at once".
pub const WAIT: Duration = Duration::from_secs(10);

/// An in-process broker on its own temporary data directory.
pub struct TestBroker {
    pub broker: Option<Broker>,
    pub dir: tempfile::TempDir,
}

impl TestBroker {
    pub async fn start() -> TestBroker {
        let dir = tempfile::tempdir().unwrap();
        let broker = start_on(dir.path()).await;
        TestBroker {
            broker: Some(broker),
            dir,
        }
    }

    pub fn url(&self) -> String {
        self.broker.as_ref().unwrap().url()
    }

    pub async fn client(&self) -> Client {
        Client::connect(&self.url()).await.unwrap()
    }

    /// A client using the binary encoding for publish / ack / deliver / confirm.
    pub async fn binary_client(&self) -> Client {
        let options = broker::ConnectOptions {
            encoding: broker::protocol::Encoding::Binary,
            ..Default::default()
        };
        Client::connect_with(&self.url(), options).await.unwrap()
    }

    /// Graceful shutdown and a fresh start on the same data directory.
    pub async fn restart(&mut self) {
        self.broker.take().unwrap().shutdown().await;
        self.broker = Some(start_on(self.dir.path()).await);
    }
}

/// The test brokers' frame limit: room for a plugin module, small enough to test.
pub const FRAME_LIMIT: usize = 1024 * 1024;

pub async fn start_on(dir: &Path) -> Broker {
    let mut config = Config::new(dir);
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.max_frame_bytes = FRAME_LIMIT;
    Broker::start(config).await.unwrap()
}

/// The next delivery, failing the test if none comes in time.
pub async fn next(sub: &mut Subscription) -> Delivery {
    tokio::time::timeout(WAIT, sub.next())
        .await
        .expect("a delivery in time")
        .expect("subscription open")
}

/// Asserts nothing is delivered for a short while.
pub async fn assert_quiet(sub: &mut Subscription) {
    if let Ok(Some(d)) = tokio::time::timeout(Duration::from_millis(300), sub.next()).await {
        panic!("unexpected delivery: {d:?}");
    }
}

/// A persistent text message for the default exchange (routed to `queue`).
pub fn persistent(queue: &str, text: &str) -> broker::Message {
    let mut m = broker::Message::text(queue, text);
    m.properties.persistent = true;
    m
}

/// The names of the broker's queues, sorted.
pub async fn queue_names(c: &Client) -> Vec<String> {
    c.list_queues()
        .await
        .unwrap()
        .into_iter()
        .map(|q| q.queue)
        .collect()
}

pub fn body(d: &Delivery) -> String {
    String::from_utf8(d.message.body.to_vec()).unwrap()
}

/// The real `broker` binary serving on a free port (and its management HTTP on another).
pub struct BrokerProcess {
    pub child: Child,
    pub url: String,
    /// `http://127.0.0.1:PORT/`
    pub http_url: String,
}

impl BrokerProcess {
    pub fn spawn(data_dir: &Path) -> BrokerProcess {
        Self::spawn_with(data_dir, &[])
    }

    /// With more `broker serve` arguments.
    pub fn spawn_with(data_dir: &Path, extra: &[&str]) -> BrokerProcess {
        let mut child = Command::new(env!("CARGO_BIN_EXE_broker"))
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--http",
                "127.0.0.1:0",
                "--amqp",
                "127.0.0.1:0",
                "--stomp",
                "127.0.0.1:0",
                "--log",
                "warn",
                "--data-dir",
            ])
            .arg(data_dir)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawning the broker binary");
        let mut line = String::new();
        let stdout = child.stdout.take().unwrap();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line).unwrap();
        let word = |prefix: &str| {
            line.split_whitespace()
                .find(|w| w.starts_with(prefix))
                .unwrap_or_else(|| panic!("no {prefix} address in `{line}`"))
                .to_owned()
        };
        let (url, http_url) = (word("ws://"), word("http://"));
        BrokerProcess {
            child,
            url,
            http_url,
        }
    }

    pub fn kill9(mut self) {
        self.child.kill().unwrap(); // SIGKILL on unix
        self.child.wait().unwrap();
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The real binary without HTTP, logging JSON lines to `log_path`; its data in
/// `data_dir`. Returns the process and the line it printed when it started serving.
pub fn spawn_with_json_log(data_dir: &Path, log_path: &Path) -> (Child, String) {
    let mut child = Command::new(bin())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--http",
            "off",
            "--amqp",
            "off",
            "--stomp",
            "off",
        ])
        .args(["--log", "info", "--log-format", "json", "--data-dir"])
        .arg(data_dir)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log_path).unwrap())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    (child, line)
}

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_broker"))
}

/// Runs the real `broker` binary against `url` (`--server`): success, stdout, stderr.
pub fn run_cli(args: &[&str], url: &str) -> (bool, String, String) {
    let out = Command::new(bin())
        .args(args)
        .args(["--server", url])
        // A developer's own CLI config file must not reach the commands under test.
        .env("BROKER_CONFIG", "/dev/null")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// What a [`RawPeer`] receives: a JSON frame, or a binary message's records.
#[derive(Debug)]
pub enum Incoming {
    Json(serde_json::Value),
    Records(Vec<broker::protocol::ServerFrame>),
}

/// A WebSocket peer that sends whatever it is told, for malformed-input tests.
pub struct RawPeer {
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
}

/// A WebSocket upgrade request to `url` logging in as the default `guest` (from
/// loopback), as the project's client does.
pub fn upgrade_request(url: &str) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
    let mut request = url.into_client_request().unwrap();
    let basic = broker::client::credentials::basic_header("guest", "guest");
    request
        .headers_mut()
        .insert("Authorization", basic.parse().unwrap());
    request
}

impl RawPeer {
    pub async fn connect(url: &str) -> RawPeer {
        let (ws, _) = tokio_tungstenite::connect_async(upgrade_request(url))
            .await
            .unwrap();
        RawPeer { ws }
    }

    /// A peer that negotiated the binary encoding (`broker-binary.v1`).
    pub async fn connect_binary(url: &str) -> RawPeer {
        let mut request = upgrade_request(url);
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            broker::protocol::BINARY_SUBPROTOCOL.parse().unwrap(),
        );
        let (ws, response) = tokio_tungstenite::connect_async(request).await.unwrap();
        assert_eq!(
            response.headers()["Sec-WebSocket-Protocol"],
            broker::protocol::BINARY_SUBPROTOCOL
        );
        RawPeer { ws }
    }

    /// The next binary message from the broker, decoded into its records (skipping any
    /// JSON frame before it).
    pub async fn recv_records(&mut self) -> Vec<broker::protocol::ServerFrame> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Incoming::Records(records) = self.recv_incoming().await {
                return records;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no binary message in time"
            );
        }
    }

    /// The next JSON frame or binary message from the broker.
    pub async fn recv_incoming(&mut self) -> Incoming {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let frame = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .expect("a frame in time")
                .expect("connection open")
                .expect("readable frame");
            match frame {
                WsMessage::Text(text) => {
                    return Incoming::Json(serde_json::from_str(&text).unwrap());
                }
                WsMessage::Binary(bytes) => {
                    return Incoming::Records(
                        broker::protocol::decode_server_frames(&bytes)
                            .map(|r| r.expect("a valid record"))
                            .collect(),
                    );
                }
                _ => {}
            }
        }
    }

    /// Waits (up to [`WAIT`]) for the broker to close the connection, failing on any data
    /// frame before that: a close frame, the end of the stream or a reset all count.
    pub async fn expect_closed(&mut self) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let frame = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .expect("the broker closed the connection in time");
            match frame {
                None | Some(Err(_)) | Some(Ok(WsMessage::Close(_))) => return,
                Some(Ok(WsMessage::Text(text))) => panic!("a frame instead of a close: {text}"),
                Some(Ok(WsMessage::Binary(_))) => panic!("a binary frame instead of a close"),
                Some(Ok(_)) => {} // ping / pong
            }
        }
    }

    pub async fn send_text(&mut self, text: impl Into<String>) {
        self.ws
            .send(WsMessage::Text(text.into().into()))
            .await
            .unwrap();
    }

    pub async fn send_binary(&mut self, bytes: Vec<u8>) {
        self.ws.send(WsMessage::Binary(bytes.into())).await.unwrap();
    }

    /// The next JSON frame from the broker (binary messages skipped).
    pub async fn recv(&mut self) -> serde_json::Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Incoming::Json(value) = self.recv_incoming().await {
                return value;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no JSON frame in time"
            );
        }
    }

    /// Sends a request and returns the next frame (its reply).
    pub async fn call(&mut self, request: serde_json::Value) -> serde_json::Value {
        self.send_text(request.to_string()).await;
        self.recv().await
    }
}

/// An in-process broker with its management HTTP listener on a free port.
pub async fn start_with_http(dir: &Path) -> Broker {
    let mut config = Config::new(dir);
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.http = Some("127.0.0.1:0".parse().unwrap());
    Broker::start(config).await.unwrap()
}

/// An HTTP response as the tests see it.
#[derive(Debug)]
pub struct HttpReply {
    pub status: u16,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpReply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// One HTTP/1.1 request over a fresh TCP connection (`Connection: close`), read to the
/// end: enough of a client for tests, with nothing between them and the broker.
pub async fn http(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> HttpReply {
    http_with_headers(addr, method, path, body, &[]).await
}

/// [`http`] with extra request headers.
pub async fn http_with_headers(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
    headers: &[(&str, &str)],
) -> HttpReply {
    let body = body.unwrap_or("").as_bytes();
    http_bytes(addr, method, path, body, headers).await
}

/// [`http_with_headers`] with any bytes as the body (`Content-Type: application/json`
/// unless `headers` name another).
pub async fn http_bytes(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    body: &[u8],
    headers: &[(&str, &str)],
) -> HttpReply {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut extra: String = headers
        .iter()
        .map(|(name, value)| format!("{name}: {value}\r\n"))
        .collect();
    // Logged in as the default user unless the test says otherwise.
    if !headers
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case("authorization"))
    {
        let basic = broker::client::credentials::basic_header("guest", "guest");
        extra.push_str(&format!("Authorization: {basic}\r\n"));
    }
    if !headers
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case("content-type"))
    {
        extra.push_str("Content-Type: application/json\r\n");
    }
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{extra}\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    // The broker may answer (413) and close before reading a body over its limit.
    let _ = stream.write_all(body).await;
    let mut raw = Vec::new();
    let read = tokio::time::timeout(WAIT, stream.read_to_end(&mut raw))
        .await
        .expect("an HTTP response in time");
    // A reset after the answer (a refused body left unread) still leaves the answer.
    if let Err(e) = read {
        assert!(!raw.is_empty(), "no HTTP response: {e}");
    }
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("a complete response");
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {head}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    HttpReply {
        status,
        headers,
        body: body.to_owned(),
    }
}

/// An in-process broker with its management HTTP listener on a free port.
pub struct HttpBroker {
    pub broker: broker::Broker,
    _dir: tempfile::TempDir,
}

impl HttpBroker {
    pub async fn start() -> HttpBroker {
        let dir = tempfile::tempdir().unwrap();
        let broker = start_with_http(dir.path()).await;
        HttpBroker { broker, _dir: dir }
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        self.broker.http_addr().expect("HTTP was asked for")
    }

    pub async fn client(&self) -> Client {
        Client::connect(&self.broker.url()).await.unwrap()
    }

    pub async fn get(&self, path: &str) -> HttpReply {
        http(self.addr(), "GET", path, None).await
    }

    pub async fn post(&self, path: &str, body: Option<&str>) -> HttpReply {
        http(self.addr(), "POST", path, body).await
    }
}

/// Polls `check` until it returns something (10 s at most).
pub async fn wait_for<T, F, Fut>(mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(found) = check().await {
            return found;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met in time"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Everything (`.*` to configure, write and read; no plugins) for `user` in `vhost`.
pub fn all_permissions(user: &str, vhost: &str) -> broker::protocol::SetPermissions {
    broker::protocol::SetPermissions {
        user: user.into(),
        vhost: vhost.into(),
        configure: ".*".into(),
        write: ".*".into(),
        read: ".*".into(),
        plugin: false,
    }
}
