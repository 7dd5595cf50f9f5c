//! Helpers of the STOMP tests: a broker with its STOMP listener, the stomp.py scenarios
//! (tests/stomp_clients/scenarios.py, a client written by others), and a raw TCP peer
//! for what no client library sends (malformed frames, silence).
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use broker::{Broker, Config};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[path = "python.rs"]
mod python;

/// Bound for anything that should happen at once.
pub const WAIT: Duration = Duration::from_secs(10);
/// Bound for one stomp.py scenario (each of its own waits is bounded too).
const SCENARIO_WAIT: Duration = Duration::from_secs(90);

pub struct StompBroker {
    pub broker: Broker,
    _dir: tempfile::TempDir,
}

impl StompBroker {
    /// A broker with its STOMP listener. Its WebSocket listener allows the `Origin` that
    /// stomp.py's WebSocket library sends (`http://` + the address it connects to), so
    /// the port is chosen first (again, should another process take it meanwhile).
    pub async fn start() -> StompBroker {
        Self::start_with(|_| {}).await
    }

    /// [`Self::start`] with the configuration adjusted.
    pub async fn start_with(adjust: impl Fn(&mut Config)) -> StompBroker {
        let dir = tempfile::tempdir().unwrap();
        let mut last_error = None;
        for _ in 0..5 {
            let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let listen = free.local_addr().unwrap();
            drop(free);
            let mut config = Config::new(dir.path());
            config.listen = listen;
            config.allowed_origins = vec![format!("http://{listen}")];
            config.stomp = Some("127.0.0.1:0".parse().unwrap());
            config.max_frame_bytes = 1024 * 1024;
            adjust(&mut config);
            match Broker::start(config).await {
                Ok(broker) => return StompBroker { broker, _dir: dir },
                Err(e) => last_error = Some(e),
            }
        }
        panic!("no broker started: {last_error:?}");
    }

    pub fn stomp_port(&self) -> u16 {
        self.broker.stomp_addr().unwrap().port()
    }

    pub fn ws_port(&self) -> u16 {
        self.broker.local_addr().port()
    }

    /// The port of `transport` (`tcp` or `ws`).
    pub fn port(&self, transport: &str) -> u16 {
        match transport {
            "ws" => self.ws_port(),
            _ => self.stomp_port(),
        }
    }

    pub async fn client(&self) -> broker::Client {
        broker::Client::connect(&self.broker.url()).await.unwrap()
    }
}

fn scenarios_py() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/stomp_clients/scenarios.py")
}

/// Runs stomp.py scenario `name` against `port`; the JSON it printed. Fails the test when
/// the scenario fails, or when python3 or stomp.py is missing (.ci/run installs them).
pub async fn scenario(name: &str, transport: &str, port: u16, args: &[&str]) -> serde_json::Value {
    scenario_with_env(name, transport, port, args, &[]).await
}

/// [`scenario`] with environment variables (`STOMP_TLS_CA` for the `tls` transport).
pub async fn scenario_with_env(
    name: &str,
    transport: &str,
    port: u16,
    args: &[&str],
    env: &[(&str, &str)],
) -> serde_json::Value {
    let mut command = Command::new("python3");
    command
        .envs(env.iter().copied())
        .arg(scenarios_py())
        .args([name, transport, &port.to_string()])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let label = format!("stomp.py scenario `{name}` over {transport} {args:?}");
    let output = python::run_with_deadline(command, SCENARIO_WAIT)
        .await
        .unwrap_or_else(|e| panic!("{label}: {e}"));
    let (success, stdout, stderr) = output;
    assert!(
        success,
        "{label} failed.\nstdout:\n{stdout}\nstderr:\n{stderr}\n\
         (stomp.py missing? python3 -m pip install stomp-py==9.0.0 websocket-client==1.9.2)"
    );
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last)
        .unwrap_or_else(|e| panic!("{label} printed no JSON ({e}):\n{stdout}\n{stderr}"))
}

/// A STOMP peer on raw TCP.
pub struct RawStomp {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl RawStomp {
    pub async fn open(port: u16) -> RawStomp {
        let stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        RawStomp {
            stream,
            buf: Vec::new(),
        }
    }

    /// Opens and logs in as guest with `extra` CONNECT headers; returns CONNECTED.
    pub async fn connect(port: u16, extra: &str) -> (RawStomp, String) {
        let mut raw = RawStomp::open(port).await;
        let connect = format!(
            "CONNECT\naccept-version:1.2\nhost:/\nlogin:guest\npasscode:guest\n{extra}\n\0"
        );
        raw.send(connect.as_bytes()).await;
        let connected = raw.frame().await.expect("CONNECTED");
        assert!(connected.starts_with("CONNECTED\n"), "{connected}");
        (raw, connected)
    }

    /// Writes `bytes`; a failure shows as the broker's close (it may close while an
    /// oversized frame is still being written).
    pub async fn send(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes).await;
    }

    /// The next frame (heart-beat end-of-lines skipped) as text without its NUL; `None`
    /// when the broker closed the connection first.
    pub async fn frame(&mut self) -> Option<String> {
        tokio::time::timeout(WAIT, self.frame_inner())
            .await
            .expect("a frame or the end in time")
    }

    async fn frame_inner(&mut self) -> Option<String> {
        loop {
            while self.buf.first().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                self.buf.remove(0);
            }
            if let Some(end) = self.buf.iter().position(|b| *b == 0) {
                let frame: Vec<u8> = self.buf.drain(..=end).collect();
                return Some(String::from_utf8_lossy(&frame[..end]).into_owned());
            }
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Waits for the broker to close the connection; what it sent meanwhile.
    pub async fn closed(&mut self) -> Vec<u8> {
        let mut rest = std::mem::take(&mut self.buf);
        let read = async {
            let mut chunk = [0u8; 4096];
            loop {
                match self.stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => rest.extend_from_slice(&chunk[..n]),
                }
            }
        };
        tokio::time::timeout(WAIT, read)
            .await
            .expect("the broker closes the connection in time");
        rest
    }

    /// Reads raw bytes until `want` arrives (e.g. a heart-beat `\n`).
    pub async fn read_byte(&mut self) -> Option<u8> {
        if !self.buf.is_empty() {
            return Some(self.buf.remove(0));
        }
        let mut byte = [0u8; 1];
        match tokio::time::timeout(WAIT, self.stream.read(&mut byte)).await {
            Ok(Ok(1)) => Some(byte[0]),
            _ => None,
        }
    }
}

/// A frame's header `name`.
pub fn header<'a>(frame: &'a str, name: &str) -> Option<&'a str> {
    let head = frame.split("\n\n").next()?;
    head.lines()
        .skip(1)
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
}
