//! Who may do what: every connection authenticates (HTTP Basic on the upgrade, or an
//! `authenticate` request first), users are managed by administrators and survive
//! restarts, browser pages of other origins cannot connect, and the management HTTP
//! listener wants a user and its own Host name.

mod common;

use broker::auth::Tag;
use broker::{Client, ClientError};
use common::{HttpBroker, TestBroker, WAIT, http_with_headers};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A connection that sent no credentials on its upgrade request.
async fn anonymous(url: &str) -> Ws {
    tokio_tungstenite::connect_async(url).await.unwrap().0
}

async fn call(ws: &mut Ws, request: Value) -> Value {
    ws.send(WsMessage::Text(request.to_string().into()))
        .await
        .unwrap();
    next_json(ws).await.expect("a reply")
}

/// The next JSON frame, or `None` once the broker closed the connection.
async fn next_json(ws: &mut Ws) -> Option<Value> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("a frame in time")
        {
            Some(Ok(WsMessage::Text(text))) => return Some(serde_json::from_str(&text).unwrap()),
            Some(Ok(WsMessage::Close(_))) | Some(Err(_)) | None => return None,
            Some(Ok(_)) => {}
        }
    }
}

fn url_as(broker: &TestBroker, user: &str, password: &str) -> String {
    let url = broker.url();
    let rest = url.strip_prefix("ws://").unwrap();
    format!(
        "ws://{}{rest}",
        broker::client::credentials::userinfo(user, password)
    )
}

fn refused(result: Result<impl std::fmt::Debug, ClientError>) {
    match result {
        Err(ClientError::Server { code, .. }) => {
            assert_eq!(code, broker::protocol::ErrorCode::AccessRefused)
        }
        other => panic!("expected access_refused, got {other:?}"),
    }
}

#[tokio::test]
async fn an_unauthenticated_connection_can_do_nothing_but_authenticate() {
    let b = TestBroker::start().await;
    let mut ws = anonymous(&b.url()).await;
    let reply = call(
        &mut ws,
        json!({"id": 1, "op": "declare_queue", "queue": "x"}),
    )
    .await;
    assert_eq!(
        (reply["type"].as_str(), reply["code"].as_str()),
        (Some("error"), Some("access_refused"))
    );
    assert_eq!(reply["id"], 1);
    let reply = call(
        &mut ws,
        json!({"id": 2, "op": "authenticate", "username": "guest", "password": "guest"}),
    )
    .await;
    assert_eq!(reply["type"], "ok", "{reply}");
    assert_eq!(reply["result"]["user"], "guest");
    let reply = call(
        &mut ws,
        json!({"id": 3, "op": "declare_queue", "queue": "x"}),
    )
    .await;
    assert_eq!(reply["type"], "ok", "{reply}");
    // Nothing was declared before the login.
    let client = b.client().await;
    assert_eq!(common::queue_names(&client).await, ["x"]);
}

#[tokio::test]
async fn a_wrong_password_is_refused_and_the_connection_closed() {
    let b = TestBroker::start().await;
    let mut ws = anonymous(&b.url()).await;
    let reply = call(
        &mut ws,
        json!({"id": 1, "op": "authenticate", "username": "guest", "password": "nope"}),
    )
    .await;
    assert_eq!(reply["code"], "access_refused", "{reply}");
    assert!(
        next_json(&mut ws).await.is_none(),
        "closed after a failed login"
    );

    // The same with credentials on the upgrade request: nothing is served.
    let client = Client::connect(&url_as(&b, "guest", "nope")).await.unwrap();
    assert!(client.list_queues().await.is_err());
}

#[tokio::test]
async fn administrators_manage_users_and_users_their_own_password() {
    let mut b = TestBroker::start().await;
    let admin = b.client().await;
    admin.add_user("ann", "first", &[]).await.unwrap();
    admin
        .add_user("ops", "secret", &[Tag::Administrator])
        .await
        .unwrap();
    // New users may do nothing until given permissions in a vhost (as in RabbitMQ).
    for user in ["ann", "ops"] {
        admin
            .set_permissions(common::all_permissions(user, "/"))
            .await
            .unwrap();
    }
    let listed: Vec<(String, Vec<Tag>)> = admin
        .list_users()
        .await
        .unwrap()
        .into_iter()
        .map(|u| (u.user, u.tags))
        .collect();
    assert_eq!(
        listed,
        [
            ("ann".to_string(), vec![]),
            ("guest".to_string(), vec![Tag::Administrator]),
            ("ops".to_string(), vec![Tag::Administrator]),
        ]
    );

    let ann = Client::connect(&url_as(&b, "ann", "first")).await.unwrap();
    refused(ann.list_users().await);
    refused(ann.add_user("mallory", "x", &[Tag::Administrator]).await);
    refused(ann.delete_user("guest").await);
    refused(ann.change_password("guest", "mine").await);
    ann.change_password("ann", "second").await.unwrap();
    let again = Client::connect(&url_as(&b, "ann", "first")).await.unwrap();
    assert!(
        again.list_queues().await.is_err(),
        "the old password no longer works"
    );

    // Users are stored: after a restart the new password and the new admin still work.
    b.restart().await;
    let ann = Client::connect(&url_as(&b, "ann", "second")).await.unwrap();
    ann.list_queues().await.unwrap();
    let ops = Client::connect(&url_as(&b, "ops", "secret")).await.unwrap();
    ops.delete_user("ann").await.unwrap();
    let gone = Client::connect(&url_as(&b, "ann", "second")).await.unwrap();
    assert!(gone.list_queues().await.is_err());
    let connections = ops.list_connections().await.unwrap();
    assert!(
        connections.iter().any(|c| c.user == "ops"),
        "{connections:?}"
    );
}

#[tokio::test]
async fn browser_pages_of_other_origins_cannot_open_a_connection() {
    let b = HttpBroker::start().await;
    let url = b.broker.url();
    let upgrade = |origin: &str| {
        let mut request = common::upgrade_request(&url);
        request
            .headers_mut()
            .insert("Origin", origin.parse().unwrap());
        request
    };
    let foreign = tokio_tungstenite::connect_async(upgrade("http://evil.example")).await;
    match foreign {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 403)
        }
        other => panic!("expected 403, got {other:?}"),
    }
    // The management page's own origin may.
    let own = format!("http://{}", b.addr());
    let (mut ws, _) = tokio_tungstenite::connect_async(upgrade(&own))
        .await
        .unwrap();
    let reply = call(&mut ws, json!({"id": 1, "op": "list_queues"})).await;
    assert_eq!(reply["type"], "ok", "{reply}");
    // Programs send no Origin and are not affected.
    let plain = url.as_str().into_client_request().unwrap();
    assert!(tokio_tungstenite::connect_async(plain).await.is_ok());
}

#[tokio::test]
async fn the_http_listener_wants_a_user_and_its_own_host_name() {
    let b = HttpBroker::start().await;
    let addr = b.addr();
    // Logged in as guest (the test helper's default): served, and not frameable.
    let reply = b.get("/api/queues").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("x-frame-options"), Some("DENY"));
    assert!(reply.header("content-security-policy").is_some());
    // No or wrong credentials: a Basic challenge.
    for auth in ["Basic Z3Vlc3Q6bm9wZQ==", "Bearer x"] {
        let reply =
            http_with_headers(addr, "GET", "/api/queues", None, &[("Authorization", auth)]).await;
        assert_eq!(reply.status, 401, "{auth}");
        assert!(
            reply
                .header("www-authenticate")
                .unwrap()
                .starts_with("Basic")
        );
    }
    // The failed login is counted.
    let metrics = b.get("/metrics").await.body;
    let failures = metrics
        .lines()
        .find_map(|l| l.strip_prefix("broker_auth_failures_total "))
        .expect("the failures metric");
    assert_eq!(failures, "1", "one wrong password so far");
    // Health checks need no login.
    let reply = http_with_headers(
        addr,
        "GET",
        "/healthz",
        None,
        &[("Authorization", "Bearer x")],
    )
    .await;
    assert_eq!(reply.status, 200);
    // A user without management tags may not use the API.
    let client = b.client().await;
    client.add_user("app", "pw", &[]).await.unwrap();
    let app = broker::client::credentials::basic_header("app", "pw");
    let reply =
        http_with_headers(addr, "GET", "/api/queues", None, &[("Authorization", &app)]).await;
    assert_eq!(reply.status, 403);
    // A rebinding page reaches the port under its own name: refused.
    let reply = raw_http(
        addr,
        "GET /api/queues HTTP/1.1\r\nHost: evil.example:80\r\n",
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 421"), "{reply}");
}

/// Sends a request head as given (with guest's credentials) and returns the response.
async fn raw_http(addr: std::net::SocketAddr, head: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let basic = broker::client::credentials::basic_header("guest", "guest");
    let request = format!("{head}Authorization: {basic}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut raw))
        .await
        .expect("a response in time")
        .unwrap();
    String::from_utf8_lossy(&raw).into_owned()
}

// The CLI runs as a blocking child process: the in-process broker needs other threads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_manages_users_and_logs_in_from_broker_url_or_flags() {
    let b = TestBroker::start().await;
    let url = b.url();
    let cli = |args: &[&str], env: Option<&str>| {
        let mut command = std::process::Command::new(common::bin());
        command.args(args).env_remove("BROKER_URL");
        match env {
            Some(broker_url) => command.env("BROKER_URL", broker_url),
            None => command.args(["--server", &url]),
        };
        let out = command.output().unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        (
            out.status.success(),
            text,
            String::from_utf8(out.stderr).unwrap(),
        )
    };
    let (ok, out, err) = cli(&["user", "add", "ann", "pw", "--tag", "management"], None);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "user ann stored");
    let (ok, _, err) = cli(&["permissions", "set", "ann", ".*", ".*", ".*"], None);
    assert!(ok, "{err}");
    let (ok, out, _) = cli(&["user", "list"], None);
    assert!(ok);
    let rows: Vec<Vec<&str>> = out
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows,
        [
            vec!["USER", "TAGS"],
            vec!["ann", "management"],
            vec!["guest", "administrator", "(loopback", "only)"],
        ]
    );
    // BROKER_URL with credentials, and --user / --password.
    let as_ann = url.replacen("ws://", "ws://ann:pw@", 1);
    let (ok, _, err) = cli(&["queues"], Some(&as_ann));
    assert!(ok, "{err}");
    let (ok, _, err) = cli(&["queues", "--user", "ann", "--password", "pw"], None);
    assert!(ok, "{err}");
    let (ok, _, _) = cli(&["queues", "--user", "ann", "--password", "wrong"], None);
    assert!(!ok, "a wrong password fails the command");
    // ann is no administrator.
    let (ok, _, err) = cli(&["user", "list", "--user", "ann", "--password", "pw"], None);
    assert!(!ok);
    assert!(err.contains("access_refused"), "{err}");
    let (ok, out, err) = cli(&["user", "delete", "ann"], None);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "user ann deleted");
}

/// An IPv4 address of one of this machine's interfaces that is not loopback (the broker
/// treats all of 127.0.0.0/8 as loopback, as `Ipv4Addr::is_loopback` does).
fn non_loopback_ipv4() -> Option<std::net::Ipv4Addr> {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs allocates the list it points `list` at; it is read while alive
    // and freed once below.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return None;
    }
    let mut found = None;
    let mut cursor = list;
    while !cursor.is_null() {
        // SAFETY: a node of the list getifaddrs returned; `ifa_addr`, when set, points at
        // a sockaddr whose family says its type.
        let entry = unsafe { &*cursor };
        let address = entry.ifa_addr;
        if !address.is_null() && i32::from(unsafe { (*address).sa_family }) == libc::AF_INET {
            let ipv4 = unsafe { &*(address as *const libc::sockaddr_in) };
            let ip = std::net::Ipv4Addr::from(u32::from_be(ipv4.sin_addr.s_addr));
            if !ip.is_loopback() && !ip.is_unspecified() {
                found = Some(ip);
                break;
            }
        }
        cursor = entry.ifa_next;
    }
    // SAFETY: the list from the successful getifaddrs above, freed once.
    unsafe { libc::freeifaddrs(list) };
    found
}

#[tokio::test]
async fn guest_is_refused_from_a_non_loopback_address() {
    let ip = non_loopback_ipv4()
        .expect("this test needs a non-loopback IPv4 address on this machine (ip -4 addr)");
    let dir = tempfile::tempdir().unwrap();
    let mut config = broker::Config::new(dir.path());
    config.listen = "0.0.0.0:0".parse().unwrap();
    config.http = Some(std::net::SocketAddr::new(ip.into(), 0));
    let broker = broker::Broker::start(config).await.unwrap();
    let port = broker.local_addr().port();
    let from_loopback = format!("ws://127.0.0.1:{port}");
    let from_network = format!("ws://{ip}:{port}");

    // From loopback guest may, and makes an administrator that may log in from anywhere.
    let admin = Client::connect(&from_loopback).await.unwrap();
    admin
        .add_user("ops", "pw", &[Tag::Administrator])
        .await
        .unwrap();
    admin
        .set_permissions(common::all_permissions("ops", "/"))
        .await
        .unwrap();

    // Over the network address the broker sees a non-loopback peer: guest is refused
    // and the connection closed; ops, same address, is let in.
    let mut ws = anonymous(&from_network).await;
    let login = json!({"id": 1, "op": "authenticate", "username": "guest", "password": "guest"});
    let reply = call(&mut ws, login).await;
    assert_eq!(reply["code"], "access_refused", "{reply}");
    assert!(
        next_json(&mut ws).await.is_none(),
        "closed after the refusal"
    );
    let mut ws = anonymous(&from_network).await;
    let login = json!({"id": 1, "op": "authenticate", "username": "ops", "password": "pw"});
    let reply = call(&mut ws, login).await;
    assert_eq!(reply["type"], "ok", "{reply}");
    let connections = admin.list_connections().await.unwrap();
    let ops = connections.iter().find(|c| c.user == "ops").unwrap();
    assert!(ops.peer.starts_with(&format!("{ip}:")), "{}", ops.peer);

    // The HTTP listener (on that address only): the same rule for Basic and the form.
    let http = broker.http_addr().unwrap();
    let guest = broker::client::credentials::basic_header("guest", "guest");
    let reply = http_with_headers(
        http,
        "GET",
        "/api/queues",
        None,
        &[("Authorization", &guest)],
    )
    .await;
    assert_eq!(reply.status, 401, "{}", reply.body);
    let form = [
        ("Content-Type", "application/x-www-form-urlencoded"),
        ("Authorization", "none"),
    ];
    let reply = http_with_headers(
        http,
        "POST",
        "/login",
        Some("user=guest&password=guest"),
        &form,
    )
    .await;
    assert_eq!(reply.status, 403, "{}", reply.body);
    assert!(reply.header("set-cookie").is_none());
    let ops = broker::client::credentials::basic_header("ops", "pw");
    let reply =
        http_with_headers(http, "GET", "/api/queues", None, &[("Authorization", &ops)]).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
}
