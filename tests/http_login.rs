//! The management page's login, with hyper's HTTP client against a broker in process: the
//! form, the session cookie and its attributes, the API taking the cookie (and still
//! Basic), logout, unknown and expired sessions, and `Secure` over TLS.

#[path = "support/certs.rs"]
#[allow(dead_code)] // the client certificates are not used here
mod certs;
mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use broker::auth::Tag;
use broker::server::TlsConfig;
use broker::{Broker, Client, Config};
use bytes::Bytes;
use common::{WAIT, wait_for};
use http_body_util::{BodyExt as _, Full};
use hyper::Request;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};

/// A response as the tests look at it.
struct Reply {
    status: u16,
    headers: hyper::HeaderMap,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The `name=value` the `Set-Cookie` header sets, and its attributes.
    fn set_cookie(&self) -> Option<(String, Vec<String>)> {
        let value = self.header("set-cookie")?;
        let mut parts = value.split(';').map(|p| p.trim().to_string());
        let pair = parts.next()?;
        Some((pair, parts.collect()))
    }
}

/// Where requests go: a plain TCP or a TLS connection to the HTTP listener.
#[derive(Clone)]
enum Target {
    Plain(SocketAddr),
    Tls(SocketAddr, Arc<rustls::ClientConfig>),
}

impl Target {
    fn addr(&self) -> SocketAddr {
        match self {
            Target::Plain(addr) | Target::Tls(addr, _) => *addr,
        }
    }

    /// One request with hyper's HTTP/1 client on a fresh connection; `Host` is the
    /// listener's address, as a browser would send it, unless `headers` name one.
    async fn send(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Reply {
        let tcp = tokio::net::TcpStream::connect(self.addr()).await.unwrap();
        match self {
            Target::Plain(_) => exchange(tcp, self.addr(), method, path, headers, body).await,
            Target::Tls(_, tls) => {
                let name = ServerName::try_from("127.0.0.1").unwrap();
                let stream = tokio_rustls::TlsConnector::from(tls.clone())
                    .connect(name, tcp)
                    .await
                    .unwrap();
                exchange(stream, self.addr(), method, path, headers, body).await
            }
        }
    }

    /// `POST /login` with the form a browser sends.
    async fn log_in(&self, user: &str, password: &str) -> Reply {
        let form = format!("user={user}&password={password}");
        let origin = self.origin();
        let headers = [
            ("content-type", "application/x-www-form-urlencoded"),
            ("origin", origin.as_str()),
        ];
        self.send("POST", "/login", &headers, &form).await
    }

    fn origin(&self) -> String {
        match self {
            Target::Plain(addr) => format!("http://{addr}"),
            Target::Tls(addr, _) => format!("https://{addr}"),
        }
    }
}

async fn exchange<S>(
    stream: S,
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Reply
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let mut request = Request::builder().method(method).uri(path);
    if !headers
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case("host"))
    {
        request = request.header(hyper::header::HOST, addr.to_string());
    }
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap();
    let response = tokio::time::timeout(WAIT, sender.send_request(request))
        .await
        .expect("a response in time")
        .unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    Reply {
        status,
        headers,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    }
}

async fn start(dir: &std::path::Path, session_timeout: Option<Duration>) -> Broker {
    let mut config = Config::new(dir);
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.http = Some("127.0.0.1:0".parse().unwrap());
    if let Some(timeout) = session_timeout {
        config.http_session_timeout = timeout;
    }
    Broker::start(config).await.unwrap()
}

/// The `Cookie` header that sends the session `set_cookie` set.
fn cookie_of(reply: &Reply) -> String {
    let (pair, _) = reply.set_cookie().expect("a session cookie");
    assert!(pair.starts_with("broker_session="), "{pair}");
    pair
}

#[tokio::test]
async fn the_page_logs_in_with_a_strict_http_only_session_cookie() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path(), None).await;
    let http = Target::Plain(broker.http_addr().unwrap());

    // Without a login the page sends the browser to the form; the API wants credentials.
    let page = http.send("GET", "/", &[], "").await;
    assert_eq!(page.status, 303);
    assert_eq!(page.header("location"), Some("/login"));
    let form = http.send("GET", "/login", &[], "").await;
    assert_eq!(form.status, 200);
    assert!(
        form.body
            .contains(r#"<form class="card login" method="post" action="/login">"#)
    );
    assert!(form.body.contains(r#"name="password" type="password""#));
    assert_eq!(form.header("x-frame-options"), Some("DENY"));
    let api = http.send("GET", "/api/queues", &[], "").await;
    assert_eq!(api.status, 401);
    assert!(api.header("www-authenticate").unwrap().starts_with("Basic"));

    // A wrong password: the form again, and no cookie.
    let wrong = http.log_in("guest", "nope").await;
    assert_eq!(wrong.status, 401);
    assert!(wrong.body.contains("Invalid user name or password."));
    assert!(wrong.header("set-cookie").is_none());

    // The right one: a session cookie with exactly these attributes, and on to the page.
    let login = http.log_in("guest", "guest").await;
    assert_eq!(login.status, 303, "{}", login.body);
    assert_eq!(login.header("location"), Some("/"));
    let (pair, mut attributes) = login.set_cookie().unwrap();
    attributes.sort();
    assert_eq!(attributes, ["HttpOnly", "Path=/", "SameSite=Strict"]);
    let token = pair.strip_prefix("broker_session=").unwrap();
    assert_eq!(token.len(), 43, "32 random bytes, base64url: {token}");
    let cookie = cookie_of(&login);
    let with_cookie = [("cookie", cookie.as_str())];

    // The cookie opens the page and the API, reading and writing.
    let page = http.send("GET", "/", &with_cookie, "").await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains(r#"action="/logout""#));
    let declared = http
        .send("PUT", "/api/queues/from-the-page", &with_cookie, "{}")
        .await;
    assert_eq!(declared.status, 200, "{}", declared.body);
    let queues = http.send("GET", "/api/queues", &with_cookie, "").await;
    assert_eq!(queues.status, 200);
    assert!(queues.body.contains("from-the-page"), "{}", queues.body);
    // Basic stays for scripts.
    let basic = broker::client::credentials::basic_header("guest", "guest");
    let scripted = http
        .send(
            "GET",
            "/api/queues",
            &[("authorization", basic.as_str())],
            "",
        )
        .await;
    assert_eq!(scripted.status, 200);

    // A token the broker never gave out is refused (no Basic challenge: the page's
    // script sends the browser to the form instead).
    let forged = "broker_session=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    let refused = http
        .send("GET", "/api/queues", &[("cookie", forged)], "")
        .await;
    assert_eq!(refused.status, 401);
    assert!(refused.header("www-authenticate").is_none());
    let refused = http.send("GET", "/", &[("cookie", forged)], "").await;
    assert_eq!(refused.status, 303);

    // Logging out from another site's page is refused; from the page itself it works,
    // clears the cookie, and the token no longer opens anything.
    let foreign = [
        ("cookie", cookie.as_str()),
        ("origin", "http://evil.example"),
    ];
    let refused = http.send("POST", "/logout", &foreign, "").await;
    assert_eq!(refused.status, 403);
    let still = http.send("GET", "/api/queues", &with_cookie, "").await;
    assert_eq!(still.status, 200);
    let origin = http.origin();
    let own = [("cookie", cookie.as_str()), ("origin", origin.as_str())];
    let logout = http.send("POST", "/logout", &own, "").await;
    assert_eq!(logout.status, 303);
    assert_eq!(logout.header("location"), Some("/login"));
    let (cleared, attributes) = logout.set_cookie().unwrap();
    assert_eq!(cleared, "broker_session=");
    assert!(
        attributes.iter().any(|a| a == "Max-Age=0"),
        "{attributes:?}"
    );
    let after = http.send("GET", "/api/queues", &with_cookie, "").await;
    assert_eq!(after.status, 401);
    let after = http.send("GET", "/", &with_cookie, "").await;
    assert_eq!(after.status, 303);
}

#[tokio::test]
async fn only_management_users_from_the_page_itself_get_a_session() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path(), None).await;
    let http = Target::Plain(broker.http_addr().unwrap());
    let admin = Client::connect(&broker.url()).await.unwrap();
    admin.add_user("app", "pw", &[]).await.unwrap();

    // A user without management tags: refused, no cookie.
    let refused = http.log_in("app", "pw").await;
    assert_eq!(refused.status, 403);
    assert!(refused.header("set-cookie").is_none());

    // A login posted by another site's page (login CSRF): refused, no cookie.
    let form = "user=guest&password=guest";
    let foreign = [
        ("content-type", "application/x-www-form-urlencoded"),
        ("origin", "http://evil.example"),
    ];
    let refused = http.send("POST", "/login", &foreign, form).await;
    assert_eq!(refused.status, 403);
    assert!(refused.header("set-cookie").is_none());

    // A DNS-rebinding page reaches the port under its own name: no form, no login.
    let rebound = [
        ("content-type", "application/x-www-form-urlencoded"),
        ("host", "evil.example:80"),
    ];
    let refused = http.send("POST", "/login", &rebound, form).await;
    assert_eq!(refused.status, 421);
    assert!(refused.header("set-cookie").is_none());
    let refused = http.send("GET", "/login", &rebound[1..], "").await;
    assert_eq!(refused.status, 421);

    // A missing field: the form again.
    let origin = http.origin();
    let headers = [("origin", origin.as_str())];
    let bad = http.send("POST", "/login", &headers, "user=guest").await;
    assert_eq!(bad.status, 400);
    assert!(bad.header("set-cookie").is_none());

    // A session's rights follow the user: deleted, its cookie opens nothing.
    admin
        .add_user("app", "pw", &[Tag::Management])
        .await
        .unwrap();
    let login = http.log_in("app", "pw").await;
    assert_eq!(login.status, 303, "{}", login.body);
    let cookie = cookie_of(&login);
    let with_cookie = [("cookie", cookie.as_str())];
    assert_eq!(http.send("GET", "/", &with_cookie, "").await.status, 200);
    admin.delete_user("app").await.unwrap();
    let gone = http.send("GET", "/api/queues", &with_cookie, "").await;
    assert_eq!(gone.status, 401);
}

#[tokio::test]
async fn an_expired_session_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path(), Some(Duration::from_millis(500))).await;
    let http = Target::Plain(broker.http_addr().unwrap());
    let login = http.log_in("guest", "guest").await;
    assert_eq!(login.status, 303);
    let cookie = cookie_of(&login);
    // Refused once its lifetime has passed (and for good).
    wait_for(|| {
        let http = http.clone();
        let cookie = cookie.clone();
        async move {
            let reply = http
                .send("GET", "/api/queues", &[("cookie", cookie.as_str())], "")
                .await;
            (reply.status == 401).then_some(())
        }
    })
    .await;
    let page = http
        .send("GET", "/", &[("cookie", cookie.as_str())], "")
        .await;
    assert_eq!(page.status, 303);
    assert_eq!(page.header("location"), Some("/login"));
}

#[tokio::test]
async fn over_https_the_cookie_is_also_secure() {
    let dir = tempfile::tempdir().unwrap();
    let ca = certs::TestCa::new(dir.path(), "login");
    let server = ca.server();
    let mut config = Config::new(dir.path().join("data"));
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.http = Some("127.0.0.1:0".parse().unwrap());
    config.tls = Some(TlsConfig {
        cert: server.cert,
        key: server.key,
        client_ca: None,
    });
    let broker = Broker::start(config).await.unwrap();
    let roots = broker::server::tls::load_roots(&ca.ca).unwrap();
    let tls = rustls::ClientConfig::builder_with_provider(broker::server::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let https = Target::Tls(broker.http_addr().unwrap(), Arc::new(tls));
    let login = https.log_in("guest", "guest").await;
    assert_eq!(login.status, 303, "{}", login.body);
    let (_, mut attributes) = login.set_cookie().unwrap();
    attributes.sort();
    assert_eq!(
        attributes,
        ["HttpOnly", "Path=/", "SameSite=Strict", "Secure"]
    );
    let cookie = cookie_of(&login);
    let queues = https
        .send("GET", "/api/queues", &[("cookie", cookie.as_str())], "")
        .await;
    assert_eq!(queues.status, 200);
}
