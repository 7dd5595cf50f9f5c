//! TLS end to end: `wss://` and `https://` with a CA generated in the test, plaintext
//! refused, client certificates logging in as their CN's user, the CLI and the bench over
//! `wss://`, and `broker serve` refusing bad TLS files with a message naming them.

#[path = "support/certs.rs"]
mod certs;
mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;

use broker::auth::Tag;
use broker::server::TlsConfig;
use broker::{Broker, Client, ClientTls, Config, ConnectOptions, QueueOptions};
use bytes::Bytes;
use certs::{CertFiles, TestCa};
use common::{WAIT, bin, body, next, persistent};
use http_body_util::{BodyExt as _, Empty};
use rustls::pki_types::ServerName;

/// A broker in process with TLS on both listeners (and client certificates of `ca`
/// logging in when `client_ca`).
async fn start_tls(dir: &Path, ca: &TestCa, client_ca: bool) -> Broker {
    let server = ca.server();
    let mut config = Config::new(dir.join("data"));
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.http = Some("127.0.0.1:0".parse().unwrap());
    config.tls = Some(TlsConfig {
        cert: server.cert,
        key: server.key,
        client_ca: client_ca.then(|| ca.ca.clone()),
    });
    Broker::start(config).await.unwrap()
}

/// Connect options trusting `ca`, presenting `identity` when given.
fn options(ca: &TestCa, identity: Option<&CertFiles>) -> ConnectOptions {
    let identity = identity.map(|files| (files.cert.as_path(), files.key.as_path()));
    ConnectOptions {
        tls: Some(ClientTls::from_files(Some(&ca.ca), identity).unwrap()),
        ..Default::default()
    }
}

/// The URL with `user:password@` in it.
fn with_user(url: &str, user: &str, password: &str) -> String {
    url.replacen("://", &format!("://{user}:{password}@"), 1)
}

/// The user the broker says the newest connection (this client's: each test opens its
/// connections one after the other) is logged in as.
async fn own_user(client: &Client) -> String {
    let connections = client.list_connections().await.unwrap();
    let newest = connections.iter().max_by_key(|c| c.conn).unwrap();
    newest.user.clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn wss_publishes_and_consumes_and_plaintext_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "main");
    let broker = start_tls(dir.path(), &ca, false).await;
    let url = broker.url();
    assert!(url.starts_with("wss://127.0.0.1:"), "{url}");

    let client = Client::connect_with(&url, options(&ca, None))
        .await
        .unwrap();
    client.confirm_select().await.unwrap();
    client
        .declare_queue("orders", QueueOptions::durable())
        .await
        .unwrap();
    client
        .publish(persistent("orders", "over tls"), false)
        .await
        .unwrap();
    let mut sub = client.consume("orders", 10).await.unwrap();
    let delivery = next(&mut sub).await;
    assert_eq!(body(&delivery), "over tls");
    client.ack(delivery.delivery_tag, false).unwrap();
    assert_eq!(own_user(&client).await, "guest");

    // The same port without TLS: the TLS handshake fails, no WebSocket opens.
    let plain = format!("ws://{}", broker.local_addr());
    let refused = tokio::time::timeout(WAIT, Client::connect(&plain)).await;
    assert!(
        refused.expect("refused in time").is_err(),
        "plaintext accepted"
    );
    // TLS without the test CA: the broker's certificate is not trusted.
    let untrusted = tokio::time::timeout(WAIT, Client::connect(&url))
        .await
        .expect("refused in time");
    let error = untrusted
        .err()
        .expect("an untrusted certificate is refused");
    assert!(error.to_string().contains("certificate"), "{error}");
    client.close().await;
    broker.shutdown().await;
}

/// A rustls client configuration trusting `ca`, presenting `identity` when given.
fn rustls_client(ca: &TestCa, identity: Option<&CertFiles>) -> Arc<rustls::ClientConfig> {
    let roots = broker::server::tls::load_roots(&ca.ca).unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(broker::server::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match identity {
        None => builder.with_no_client_auth(),
        Some(files) => {
            let chain = broker::server::tls::load_certificates(&files.cert).unwrap();
            let key = broker::server::tls::load_private_key(&files.key).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
    };
    Arc::new(config)
}

/// One `GET` over `https://` with hyper's HTTP/1 client on a tokio-rustls stream:
/// status and body, or why there was no response.
async fn https_get(
    addr: SocketAddr,
    path: &str,
    tls: Arc<rustls::ClientConfig>,
    host: &str,
    basic: Option<(&str, &str)>,
) -> Result<(u16, String), String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS: {e}"))?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let mut request = hyper::Request::get(path).header(hyper::header::HOST, host);
    if let Some((user, password)) = basic {
        let value = broker::client::credentials::basic_header(user, password);
        request = request.header(hyper::header::AUTHORIZATION, value);
    }
    let request = request.body(Empty::<Bytes>::new()).unwrap();
    let response = tokio::time::timeout(WAIT, sender.send_request(request))
        .await
        .map_err(|_| "no response in time".to_string())?
        .map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let bytes = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
}

/// What a plaintext HTTP request to `addr` gets back: every byte until the broker closes.
async fn plaintext_http(addr: SocketAddr) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut reply = Vec::new();
    // A reset instead of a clean close is a refusal too.
    let _ = tokio::time::timeout(WAIT, tcp.read_to_end(&mut reply))
        .await
        .expect("the broker closes in time");
    reply
}

#[tokio::test(flavor = "multi_thread")]
async fn https_serves_the_api_and_refuses_plaintext() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "main");
    let broker = start_tls(dir.path(), &ca, false).await;
    let addr = broker.http_addr().unwrap();
    assert_eq!(broker.http_url().unwrap(), format!("https://{addr}/"));
    let admin = Client::connect_with(&broker.url(), options(&ca, None))
        .await
        .unwrap();
    admin
        .declare_queue("visible", QueueOptions::default())
        .await
        .unwrap();
    let tls = rustls_client(&ca, None);
    let host = addr.to_string();

    let guest = Some(("guest", "guest"));
    let (status, text) = https_get(addr, "/api/queues", tls.clone(), &host, guest)
        .await
        .unwrap();
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("\"visible\""), "{text}");
    // Authentication and the Host allow-list are unchanged over TLS.
    let (status, _) = https_get(addr, "/api/queues", tls.clone(), &host, None)
        .await
        .unwrap();
    assert_eq!(status, 401);
    let (status, _) = https_get(addr, "/api/queues", tls.clone(), "evil.example:80", guest)
        .await
        .unwrap();
    assert_eq!(status, 421);

    // Plaintext HTTP on the same port gets no HTTP response.
    let reply = plaintext_http(addr).await;
    assert!(
        !reply.starts_with(b"HTTP/"),
        "plaintext answered: {}",
        String::from_utf8_lossy(&reply)
    );
    admin.close().await;
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn client_certificates_log_in_as_their_cn() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "main");
    let broker = start_tls(dir.path(), &ca, true).await;
    let url = broker.url();
    let admin = Client::connect_with(&url, options(&ca, None))
        .await
        .unwrap();
    admin.add_user("app", "app-pw", &[]).await.unwrap();
    admin
        .add_user("ops", "ops-pw", &[Tag::Administrator])
        .await
        .unwrap();
    for user in ["app", "ops"] {
        admin
            .set_permissions(common::all_permissions(user, "/"))
            .await
            .unwrap();
    }
    let app_cert = ca.client("app");

    // The certificate alone logs in as `app` (the client sends no credentials).
    let app = Client::connect_with(&url, options(&ca, Some(&app_cert)))
        .await
        .unwrap();
    app.declare_queue("app-q", QueueOptions::default())
        .await
        .unwrap();
    assert_eq!(own_user(&app).await, "app");
    app.close().await;

    // A password still works without a certificate.
    let by_password = Client::connect_with(&with_user(&url, "app", "app-pw"), options(&ca, None))
        .await
        .unwrap();
    assert_eq!(own_user(&by_password).await, "app");
    by_password.close().await;

    // Credentials for another user next to the certificate: refused.
    let mixed = Client::connect_with(
        &with_user(&url, "ops", "ops-pw"),
        options(&ca, Some(&app_cert)),
    )
    .await
    .unwrap();
    let refused = mixed.list_connections().await.unwrap_err();
    assert!(
        matches!(refused, broker::ClientError::Closed)
            || refused.code() == Some(broker::protocol::ErrorCode::AccessRefused),
        "{refused}"
    );

    // The CA vouches for `nobody`, but there is no such user.
    let nobody = Client::connect_with(&url, options(&ca, Some(&ca.client("nobody"))))
        .await
        .unwrap();
    let refused = nobody
        .declare_queue("x", QueueOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(refused, broker::ClientError::Closed)
            || refused.code() == Some(broker::protocol::ErrorCode::AccessRefused),
        "{refused}"
    );
    assert!(!broker_has_queue(&admin, "x").await);

    // A certificate for `app` from another CA: the TLS handshake fails.
    let other = TestCa::new(dir.path(), "other");
    let forged = other.client("app");
    let result = tokio::time::timeout(
        WAIT,
        Client::connect_with(&url, options(&ca, Some(&forged))),
    )
    .await
    .expect("refused in time");
    assert!(result.is_err(), "a certificate of another CA was accepted");

    // The management listener takes the certificate too: `ops` may use the API, `app`
    // (no tags) may not, and a foreign certificate gets no response at all.
    let addr = broker.http_addr().unwrap();
    let host = addr.to_string();
    let ops = rustls_client(&ca, Some(&ca.client("ops")));
    let (status, text) = https_get(addr, "/api/queues", ops, &host, None)
        .await
        .unwrap();
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("\"app-q\""), "{text}");
    let app_http = rustls_client(&ca, Some(&app_cert));
    let (status, _) = https_get(addr, "/api/queues", app_http, &host, None)
        .await
        .unwrap();
    assert_eq!(status, 403);
    let foreign = rustls_client(&ca, Some(&forged));
    let result = https_get(addr, "/api/queues", foreign, &host, None).await;
    assert!(result.is_err(), "foreign certificate answered: {result:?}");
    admin.close().await;
    broker.shutdown().await;
}

async fn broker_has_queue(client: &Client, queue: &str) -> bool {
    common::queue_names(client)
        .await
        .iter()
        .any(|name| name == queue)
}

/// The real binary with TLS: its URL (`wss://`) and management URL (`https://`).
struct TlsProcess {
    child: std::process::Child,
    url: String,
    http_url: String,
}

impl Drop for TlsProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_tls_broker(data: &Path, server: &CertFiles, client_ca: &Path) -> TlsProcess {
    let mut child = Command::new(bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0"])
        .args(["--amqp", "off", "--stomp", "off"])
        .args(["--amqps", "127.0.0.1:0", "--stomps", "127.0.0.1:0"])
        .args(["--log", "warn", "--data-dir"])
        .arg(data)
        .arg("--tls-cert")
        .arg(&server.cert)
        .arg("--tls-key")
        .arg(&server.key)
        .arg("--tls-ca")
        .arg(client_ca)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    let stdout = child.stdout.take().unwrap();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line).unwrap();
    let word = |prefix: &str| {
        line.split_whitespace()
            .find(|w| w.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix} address in `{line}`"))
            .to_owned()
    };
    let (url, http_url) = (word("wss://"), word("https://"));
    // The TLS listeners of AMQP and STOMP are on, and named, with the certificates.
    word("amqps://");
    assert!(line.contains("STOMP over TLS on 127.0.0.1:"), "{line}");
    TlsProcess {
        child,
        url,
        http_url,
    }
}

/// Runs the CLI with `args` and `envs`: success, stdout, stderr.
fn cli(args: &[&str], envs: &[(&str, &Path)]) -> (bool, String, String) {
    let mut command = Command::new(bin());
    command.args(args).env_remove("BROKER_CA");
    for (name, value) in envs {
        command.env(name, value);
    }
    let out = command.output().unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn the_cli_and_the_bench_speak_wss_with_a_ca_file() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "main");
    let process = spawn_tls_broker(&dir.path().join("data"), &ca.server(), &ca.ca);
    assert!(
        process.http_url.starts_with("https://"),
        "{}",
        process.http_url
    );
    let url = process.url.as_str();
    let ca_file = ca.ca.to_str().unwrap();

    let (ok, _, err) = cli(
        &[
            "declare",
            "queue",
            "jobs",
            "--durable",
            "--server",
            url,
            "--ca",
            ca_file,
        ],
        &[],
    );
    assert!(ok, "{err}");
    let (ok, _, err) = cli(
        &[
            "publish", "jobs", "--body", "hello", "--server", url, "--ca", ca_file,
        ],
        &[],
    );
    assert!(ok, "{err}");
    // BROKER_CA instead of --ca.
    let (ok, out, err) = cli(&["queues", "--server", url], &[("BROKER_CA", &ca.ca)]);
    assert!(ok, "{err}");
    let jobs = out
        .lines()
        .find(|l| l.contains("jobs"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(jobs.split_whitespace().any(|w| w == "1"), "{out}");

    // Without the CA the broker's certificate is not trusted; ws:// is refused.
    let (ok, _, err) = cli(&["queues", "--server", url], &[]);
    assert!(!ok);
    assert!(err.contains("certificate"), "{err}");
    let plain = url.replacen("wss://", "ws://", 1);
    let (ok, _, _) = cli(&["queues", "--server", &plain], &[]);
    assert!(!ok, "plaintext accepted");

    // --cert / --key log in as the certificate's user: `app` may change its own
    // password but, without the administrator tag, not add users (guest could).
    let (ok, _, err) = cli(
        &[
            "user", "add", "app", "app-pw", "--server", url, "--ca", ca_file,
        ],
        &[],
    );
    assert!(ok, "{err}");
    let (ok, _, err) = cli(
        &[
            "permissions",
            "set",
            "app",
            ".*",
            ".*",
            ".*",
            "--server",
            url,
            "--ca",
            ca_file,
        ],
        &[],
    );
    assert!(ok, "{err}");
    let app = ca.client("app");
    let (cert, key) = (app.cert.to_str().unwrap(), app.key.to_str().unwrap());
    let as_app = |args: &[&str]| {
        let mut args = args.to_vec();
        args.extend([
            "--server",
            url,
            "--ca",
            ca_file,
            "--cert",
            cert,
            "--cert-key",
            key,
        ]);
        cli(&args, &[])
    };
    let (ok, _, err) = as_app(&["user", "passwd", "app", "new-pw"]);
    assert!(ok, "{err}");
    let (ok, _, err) = as_app(&["user", "add", "intruder", "pw"]);
    assert!(!ok);
    assert!(err.contains("administrator"), "{err}");

    // The bench over wss://.
    let (ok, out, err) = cli(
        &[
            "bench",
            "persistent",
            "--msgs",
            "300",
            "--server",
            url,
            "--ca",
            ca_file,
        ],
        &[],
    );
    assert!(ok, "{err}");
    assert!(out.starts_with("scenario=persistent msgs=300 "), "{out}");
}

/// `broker serve` with these TLS files: it must exit with an error (output collected by
/// a thread; killed if it is still running after the deadline).
fn serve_fails(dir: &Path, cert: &Path, key: &Path) -> String {
    let child = Command::new(bin())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--http",
            "off",
            "--data-dir",
        ])
        .arg(dir.join("data"))
        .arg("--tls-cert")
        .arg(cert)
        .arg("--tls-key")
        .arg(key)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let Ok(out) = rx.recv_timeout(WAIT) else {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        panic!("broker serve kept running with bad TLS files");
    };
    let out = out.unwrap();
    assert!(!out.status.success());
    String::from_utf8(out.stderr).unwrap()
}

#[test]
fn serve_refuses_missing_or_garbage_tls_files_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "main");
    let server = ca.server();
    let missing = dir.path().join("no-such-cert.pem");
    let err = serve_fails(dir.path(), &missing, &server.key);
    assert!(err.contains(missing.to_str().unwrap()), "{err}");

    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "this is not a certificate\n").unwrap();
    let err = serve_fails(dir.path(), &garbage, &server.key);
    assert!(err.contains(garbage.to_str().unwrap()), "{err}");
    assert!(err.contains("no PEM certificate"), "{err}");

    let err = serve_fails(dir.path(), &server.cert, &garbage);
    assert!(err.contains(garbage.to_str().unwrap()), "{err}");
    assert!(err.contains("no PEM private key"), "{err}");

    // A key that is not the certificate's.
    let other = ca.client("someone");
    let err = serve_fails(dir.path(), &server.cert, &other.key);
    assert!(err.contains(server.cert.to_str().unwrap()), "{err}");
    assert!(err.contains("do not go together"), "{err}");
    // Nothing was created: the files are checked before the store is opened.
    assert!(!dir.path().join("data").exists());
}
