//! The management HTTP listener: Prometheus metrics, health checks, a JSON API and the
//! management page.
//!
//! The API goes through the protocol's own path (see [`Session`]): each call becomes
//! the request a WebSocket client would send, made on a pseudo-connection of the calling
//! user in the vhost the request names, so it is validated the same way and fails
//! with the same error codes (`{"error": {"code": .., "message": ..}}`, with an HTTP status
//! chosen from the code). The page is plain HTML, CSS and JS compiled into the binary: no
//! build step, nothing fetched from elsewhere.

mod access;
mod api;
mod login;
mod metrics;
mod plugin_api;
pub mod rate_history;
mod readiness;
mod sessions;

pub use access::default_hosts;
pub use rate_history::RateHistory;
pub use sessions::Sessions;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

use crate::router::{Session, SessionError as ApiError};

use crate::plugin::PluginHost;
use crate::protocol::{ConnectionList, ErrorCode, ExchangeList, QueueList};
use crate::store::WriterStats;

/// Simultaneous HTTP connections; more wait to be accepted.
const MAX_HTTP_CONNECTIONS: usize = 256;
/// How long a client may take to send a request head (and, with TLS, the handshake).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request body (the API's bodies are tiny JSON objects).
pub(crate) const MAX_BODY_BYTES: usize = 64 * 1024;

const INDEX_HTML: &str = include_str!("page/index.html");
const APP_JS: &str = include_str!("page/app.js");
const STYLE_CSS: &str = include_str!("page/style.css");
const ACTIONS_JS: &str = include_str!("page/actions.js");
const PLUGINS_JS: &str = include_str!("page/plugins.js");

/// What the HTTP handlers read.
pub struct HttpState {
    pub management: Session,
    pub plugins: PluginHost,
    pub store: Arc<WriterStats>,
    pub memory: Arc<crate::server::MemoryStats>,
    pub started: Instant,
    pub auth: Arc<crate::auth::Authenticator>,
    /// `Host` values the listener answers to.
    pub allowed_hosts: Vec<String>,
    /// `https://` only, when set.
    pub tls: Option<crate::server::tls::TlsSetup>,
    /// The management page's logins.
    pub sessions: Sessions,
    /// Recent message rates per vhost, for the page's chart.
    pub rates: RateHistory,
}

/// Serves HTTP on `listener` until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    state: Arc<HttpState>,
    mut shutdown: watch::Receiver<bool>,
) {
    let limit = Arc::new(Semaphore::new(MAX_HTTP_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            permit = limit.clone().acquire_owned() => permit.expect("semaphore never closed"),
            _ = shutdown.changed() => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "HTTP accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let state = state.clone();
        let mut shutdown = shutdown.clone();
        tokio::spawn(async move {
            // The TLS handshake, bounded like the request head.
            let handshake = crate::server::tls::accept(
                state.tls.as_ref(),
                crate::shard_threads::Socket::new(stream),
            );
            let stream = match tokio::time::timeout(HEADER_READ_TIMEOUT, handshake).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    if crate::server::tls::is_certificate_error(&e) {
                        tracing::warn!(target: "audit", event = "certificate_refused", %peer, error = %e, "HTTPS handshake refused: client certificate");
                    }
                    return;
                }
                Err(_) => return,
            };
            let certified: Option<Arc<str>> = stream.client_user().map(Arc::from);
            let service = hyper::service::service_fn(move |req| {
                let state = state.clone();
                let certified = certified.clone();
                async move {
                    let admitted = access::admit(&state, &req, peer, certified.as_deref()).await;
                    let mut response = match admitted {
                        Ok(user) => {
                            let vhost = requested_vhost(&req);
                            handle(&state, req, &Caller { user, peer, vhost }).await
                        }
                        Err(refused) => refused,
                    };
                    access::harden(&mut response);
                    Ok::<_, Infallible>(response)
                }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = shutdown.changed() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
                }
            }
            drop(permit);
        });
    }
    tracing::debug!("HTTP listener stopped");
}

type HttpResponse = Response<Full<Bytes>>;

/// Who is asking: the authenticated user (`None` for the health checks), from where,
/// and in which vhost the API acts for it.
struct Caller {
    user: Option<crate::auth::Principal>,
    peer: std::net::SocketAddr,
    vhost: String,
}

/// The vhost a request's `?vhost=` names (percent-encoded: `%2F` is `/`); `/` without.
fn requested_vhost<B>(req: &Request<B>) -> String {
    let query = parse_query(req.uri().query().unwrap_or(""));
    query
        .into_iter()
        .find(|(name, _)| name == "vhost")
        .map(|(_, vhost)| vhost)
        .unwrap_or_else(|| crate::vhost::DEFAULT_VHOST.to_string())
}

async fn handle(state: &HttpState, req: Request<Incoming>, who: &Caller) -> HttpResponse {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let query = parse_query(req.uri().query().unwrap_or(""));
    let segments: Vec<String> = match path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(percent_decode)
        .collect::<Option<Vec<_>>>()
    {
        Some(segments) => segments,
        None => {
            let e = ApiError::new(ErrorCode::InvalidField, "the path is not valid UTF-8");
            return error_response(&e);
        }
    };
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    let get = method == Method::GET || method == Method::HEAD;
    let post = method == Method::POST;
    if post && !same_origin(&req) {
        // A page on another site could otherwise purge queues through the operator's
        // browser (a form POST needs no CORS preflight).
        let e = ApiError::new(
            ErrorCode::AccessRefused,
            "cross-origin requests may not change anything",
        );
        return error_response(&e);
    }
    let result = match (segments.as_slice(), get, post) {
        (["login"], true, _) => return login::form(StatusCode::OK, None),
        (["login"], _, true) => return login::log_in(state, req, who.peer).await,
        (["logout"], _, true) => return login::log_out(state, &req),
        ([] | ["index.html"], true, _) => return asset("text/html; charset=utf-8", INDEX_HTML),
        (["app.js"], true, _) => return asset("text/javascript; charset=utf-8", APP_JS),
        (["actions.js"], true, _) => return asset("text/javascript; charset=utf-8", ACTIONS_JS),
        (["plugins.js"], true, _) => return asset("text/javascript; charset=utf-8", PLUGINS_JS),
        (["style.css"], true, _) => return asset("text/css; charset=utf-8", STYLE_CSS),
        (["healthz"], true, _) => return text(StatusCode::OK, "ok\n"),
        (["readyz"], true, _) => return readiness::readyz(state).await,
        (["metrics"], true, _) => return scrape(state).await,
        (["api", "queues"], true, _) => op(state, who, json!({"op": "list_queues"})).await,
        (["api", "queues", queue], true, _) => {
            op(state, who, json!({"op": "queue_info", "queue": queue})).await
        }
        (["api", "queues", queue, "messages"], true, _) => {
            let mut request = json!({"op": "peek_queue", "queue": queue});
            if let Some(limit) = query_value(&query, "limit") {
                request["limit"] = limit;
            }
            op(state, who, request).await
        }
        (["api", "queues", queue, "purge"], _, true) => {
            op(state, who, json!({"op": "purge_queue", "queue": queue})).await
        }
        (["api", "queues", queue, "requeue"], _, true) => match body_object(req).await {
            Ok(mut request) => {
                request.insert("op".into(), "requeue_dead_letters".into());
                request.insert("queue".into(), (*queue).into());
                op(state, who, Value::Object(request)).await
            }
            Err(e) => Err(e),
        },
        (["api", "exchanges"], true, _) => op(state, who, json!({"op": "list_exchanges"})).await,
        (["api", "bindings"], true, _) => op(state, who, json!({"op": "list_bindings"})).await,
        (["api", "plugins"], true, _) => op(state, who, json!({"op": "list_plugins"})).await,
        (["api", "plugins", name, "reset"], _, true) => {
            op(state, who, json!({"op": "reset_plugin", "name": name})).await
        }
        (["api", "plugins", name, "promote"], _, true) => {
            op(state, who, json!({"op": "promote_plugin", "name": name})).await
        }
        (["api", "plugins", name, "shadow"], true, _) => {
            op(state, who, json!({"op": "plugin_shadow", "name": name})).await
        }
        (["api", "connections"], true, _) => {
            op(state, who, json!({"op": "list_connections"})).await
        }
        (["api", "vhosts"], true, _) => op(state, who, json!({"op": "list_vhosts"})).await,
        (["api", "rates"], true, _) => plugin_api::rates(state, who),
        (["api", "plugins", name, "versions"], _, true) => {
            plugin_api::deploy(state, who, name, &query, req).await
        }
        (["api", "plugins", name, "rollback"], _, true) => {
            plugin_api::rollback(state, who, name, req).await
        }
        _ => match api::write(state, who, &method, &segments, &query, req).await {
            Some(result) => result,
            None if known_path(&segments) => {
                let e = ApiError::new(
                    ErrorCode::UnknownOp,
                    format!("{method} is not allowed on {path}"),
                );
                return with_status(error_response(&e), StatusCode::METHOD_NOT_ALLOWED);
            }
            None => {
                let e = ApiError::new(ErrorCode::UnknownOp, format!("no such endpoint: {path}"));
                return with_status(error_response(&e), StatusCode::NOT_FOUND);
            }
        },
    };
    match result {
        Ok(value) => json_response(StatusCode::OK, &value),
        Err(e) => error_response(&e),
    }
}

/// True unless the browser says the request comes from a page of another origin (its
/// `Origin` names a different host than `Host`). Non-browser clients send no `Origin`.
fn same_origin(req: &Request<Incoming>) -> bool {
    let Some(origin) = req.headers().get(hyper::header::ORIGIN) else {
        return true;
    };
    let host = req
        .headers()
        .get(hyper::header::HOST)
        .and_then(|h| h.to_str().ok());
    let origin_host = origin
        .to_str()
        .ok()
        .and_then(|o| o.split_once("://"))
        .map(|(_, rest)| rest.trim_end_matches('/'));
    matches!((origin_host, host), (Some(o), Some(h)) if o.eq_ignore_ascii_case(h))
}

/// Paths that exist under some other method (for 405 rather than 404).
fn known_path(segments: &[&str]) -> bool {
    matches!(
        segments,
        [] | ["metrics"
            | "healthz"
            | "readyz"
            | "app.js"
            | "actions.js"
            | "plugins.js"
            | "style.css"
            | "index.html"
            | "login"
            | "logout"]
            | [
                "api",
                "queues"
                    | "exchanges"
                    | "bindings"
                    | "plugins"
                    | "connections"
                    | "vhosts"
                    | "rates"
            ]
            | ["api", "queues", _]
            | ["api", "queues", _, "messages" | "purge" | "requeue" | "get"]
            | [
                "api",
                "plugins",
                _,
                "reset" | "promote" | "rollback" | "shadow" | "versions"
            ]
            | ["api", "exchanges", _]
            | ["api", "exchanges", _, "publish" | "route"]
    )
}

/// Sends `request` as the caller, in the vhost it asked for: its permissions there are
/// checked first, as on a WebSocket connection to that vhost.
async fn op(state: &HttpState, who: &Caller, request: Value) -> Result<Value, ApiError> {
    let session = session_for(state, who, &request)?;
    let result = session.call(request).await?;
    // Operations with an empty result answer `{}` rather than `null`.
    Ok(if result.is_null() { json!({}) } else { result })
}

/// A session acting for the caller in its vhost, once `request` passed the caller's
/// permissions there.
fn session_for(
    state: &HttpState,
    who: &Caller,
    request: &Value,
) -> Result<crate::router::Session, ApiError> {
    let Some(user) = &who.user else {
        let e = "the API needs a logged-in user";
        return Err(ApiError::new(ErrorCode::AccessRefused, e));
    };
    let mut numbered = request.clone();
    numbered["id"] = json!(0);
    let mut parsed = crate::protocol::parse_request(&numbered.to_string())
        .map_err(|e| ApiError::new(e.code, e.message))?;
    state
        .auth
        .admit(
            user,
            &who.vhost,
            who.peer.ip(),
            &mut parsed.op,
            &Default::default(),
        )
        .map_err(|(code, message)| ApiError::new(code, message))?;
    Ok(state.management.acting_for(user, &who.vhost))
}

/// A request body, at most `limit` bytes.
async fn body_bytes(req: Request<Incoming>, limit: usize) -> Result<Bytes, ApiError> {
    let body = Limited::new(req.into_body(), limit)
        .collect()
        .await
        .map_err(|e| {
            let code = if e.is::<http_body_util::LengthLimitError>() {
                ErrorCode::FrameTooLarge
            } else {
                ErrorCode::MalformedJson
            };
            ApiError::new(code, format!("request body: {e} (at most {limit} bytes)"))
        })?;
    Ok(body.to_bytes())
}

/// A request body as a JSON object (an empty body is an empty object).
async fn body_object(req: Request<Incoming>) -> Result<serde_json::Map<String, Value>, ApiError> {
    let body = body_bytes(req, MAX_BODY_BYTES).await?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Default::default());
    }
    match serde_json::from_slice(&body) {
        Ok(Value::Object(object)) => Ok(object),
        Ok(_) => Err(ApiError::new(
            ErrorCode::MalformedJson,
            "the body must be a JSON object",
        )),
        Err(e) => Err(ApiError::new(ErrorCode::MalformedJson, e.to_string())),
    }
}

async fn scrape(state: &HttpState) -> HttpResponse {
    let lists = tokio::try_join!(
        state.management.call(json!({"op": "list_queues"})),
        state.management.call(json!({"op": "list_exchanges"})),
        state.management.call(json!({"op": "list_connections"})),
    );
    let (queues, exchanges, connections) = match lists {
        Ok(lists) => lists,
        Err(e) => return error_response(&e),
    };
    let parse = |e: serde_json::Error| ApiError::new(ErrorCode::StoreError, e.to_string());
    let parsed = (|| {
        let queues: QueueList = serde_json::from_value(queues).map_err(parse)?;
        let exchanges: ExchangeList = serde_json::from_value(exchanges).map_err(parse)?;
        let connections: ConnectionList = serde_json::from_value(connections).map_err(parse)?;
        Ok::<_, ApiError>((queues, exchanges, connections))
    })();
    let (queues, exchanges, connections) = match parsed {
        Ok(parsed) => parsed,
        Err(e) => return error_response(&e),
    };
    let text = metrics::render(&metrics::Scrape {
        queues: queues.queues,
        exchanges: exchanges.exchanges,
        connections: connections.connections.len(),
        plugins: state.plugins.all_stats(),
        store: state.store.snapshot(),
        resident_bytes: crate::server::resident_memory(),
        memory_high_watermark_bytes: state.memory.watermark_bytes.load(Ordering::Relaxed),
        memory_alarm: state.memory.alarm.load(Ordering::Relaxed) == 1,
        auth_failures: state.auth.stats.failures.load(Ordering::Relaxed),
        uptime_seconds: state.started.elapsed().as_secs_f64(),
    });
    let mut response = Response::new(Full::new(Bytes::from(text)));
    response.headers_mut().insert(
        CONTENT_TYPE,
        "text/plain; version=0.0.4; charset=utf-8"
            .parse()
            .expect("valid header"),
    );
    response
}

/// The HTTP status for a protocol error code.
pub fn status_of(code: ErrorCode) -> StatusCode {
    use ErrorCode::*;
    match code {
        MalformedJson | UnknownOp | InvalidField | UnsupportedFrame | MalformedBinary
        | InvalidBinding | InvalidPlugin | UnknownExchangeType => StatusCode::BAD_REQUEST,
        FrameTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        QueueNotFound | ExchangeNotFound | PluginNotFound | UserNotFound | VhostNotFound
        | UnknownConsumer | UnknownDeliveryTag => StatusCode::NOT_FOUND,
        PreconditionFailed | ConsumerTagInUse | QueueFull | Unroutable => StatusCode::CONFLICT,
        ResourceLocked => StatusCode::LOCKED,
        AccessRefused => StatusCode::FORBIDDEN,
        ExchangeUnavailable | StoreError => StatusCode::SERVICE_UNAVAILABLE,
        PluginError => StatusCode::BAD_GATEWAY,
    }
}

fn error_response(e: &ApiError) -> HttpResponse {
    let body = json!({"error": {"code": e.code, "message": e.message}});
    json_response(status_of(e.code), &body)
}

fn json_response(status: StatusCode, value: &Value) -> HttpResponse {
    let mut response = Response::new(Full::new(Bytes::from(value.to_string())));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        "application/json".parse().expect("valid header"),
    );
    headers.insert(CACHE_CONTROL, "no-store".parse().expect("valid header"));
    response
}

fn with_status(mut response: HttpResponse, status: StatusCode) -> HttpResponse {
    *response.status_mut() = status;
    response
}

fn text(status: StatusCode, body: &'static str) -> HttpResponse {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        "text/plain; charset=utf-8".parse().expect("valid header"),
    );
    response
}

fn asset(content_type: &'static str, body: &'static str) -> HttpResponse {
    let mut response = text(StatusCode::OK, body);
    response
        .headers_mut()
        .insert(CONTENT_TYPE, content_type.parse().expect("valid header"));
    response
}

/// `a=1&b=x%20y` as (name, value) pairs, decoded.
pub(crate) fn parse_query(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .filter_map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let plus = |s: &str| s.replace('+', " ");
            Some((percent_decode(&plus(name))?, percent_decode(&plus(value))?))
        })
        .collect()
}

/// A query parameter as JSON: a number when it reads as one, else a string (so a bad
/// value fails the protocol's own validation, with its message).
fn query_value(query: &[(String, String)], name: &str) -> Option<Value> {
    let (_, raw) = query.iter().find(|(n, _)| n == name)?;
    Some(match raw.parse::<u64>() {
        Ok(n) => n.into(),
        Err(_) => raw.clone().into(),
    })
}

/// Decodes `%XX` escapes; `None` when the result is not UTF-8 or an escape is broken.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_paths_and_queries() {
        assert_eq!(percent_decode("a%2Fb%20c").as_deref(), Some("a/b c"));
        assert_eq!(percent_decode("%E2%82%AC").as_deref(), Some("€"));
        assert_eq!(percent_decode("bad%2"), None);
        assert_eq!(percent_decode("%FF"), None);
        let q = parse_query("limit=5&message_id=a+b%21&flag");
        assert_eq!(query_value(&q, "limit"), Some(json!(5)));
        assert_eq!(query_value(&q, "message_id"), Some(json!("a b!")));
        assert_eq!(query_value(&q, "flag"), Some(json!("")));
        assert_eq!(query_value(&q, "none"), None);
    }
}
