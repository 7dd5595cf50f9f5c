//! Who may use the management HTTP listener: requests must name an allowed `Host` (so a
//! DNS-rebinding page cannot reach it under its own name) and, except for the health
//! checks and the login form, carry HTTP Basic credentials, a session cookie
//! ([`super::login`]) or, over TLS, a verified client certificate, of a user tagged
//! `administrator` or `management` (`monitoring` may read). A browser asking for the page
//! without them is sent to the login form. Every response
//! forbids framing and off-site scripts.

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{AUTHORIZATION, HOST, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};

use super::{HttpState, login};
use crate::auth::{Principal, Tag, parse_basic};

/// The `Host` values the listener on `addr` answers to by default: its address, and
/// `localhost:PORT` when it is a loopback address.
pub fn default_hosts(addr: SocketAddr) -> Vec<String> {
    let mut hosts = vec![addr.to_string()];
    if addr.ip().is_loopback() {
        hosts.push(format!("localhost:{}", addr.port()));
    }
    hosts
}

/// `Err(response)` unless the request may proceed. `certified`: the user the connection's
/// verified client certificate names, which logs in requests without credentials.
pub(super) async fn admit<B>(
    state: &HttpState,
    req: &Request<B>,
    peer: SocketAddr,
    certified: Option<&str>,
) -> Result<Option<Principal>, Response<Full<Bytes>>> {
    let host = req.headers().get(HOST).and_then(|h| h.to_str().ok());
    let host_allowed = host.is_some_and(|host| {
        state
            .allowed_hosts
            .iter()
            .any(|allowed| allowed.eq_ignore_ascii_case(host))
    });
    if !host_allowed {
        return Err(plain(
            StatusCode::MISDIRECTED_REQUEST,
            "this Host is not served here (see --http-allowed-host)\n",
        ));
    }
    let path = req.uri().path();
    if path == "/healthz" || path == "/readyz" || login::is_public(req.method(), path) {
        return Ok(None);
    }
    let credentials = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_basic);
    let session = login::session_token(req);
    let page = login::is_page(req.method(), path);
    let login = match (credentials, session, certified) {
        (Some((user, password)), _, _) => {
            state.auth.authenticate(&user, &password, peer.ip()).await
        }
        (None, Some(token), _) => match login::resume(state, token, peer) {
            Some(principal) => Ok(principal),
            // No Basic challenge: a page whose session ended goes back to the form
            // rather than to the browser's password dialog.
            None if page => return Err(login::to_form()),
            None => return Err(plain(StatusCode::UNAUTHORIZED, "the session has ended\n")),
        },
        (None, None, Some(user)) => state.auth.authenticate_certificate(user, peer.ip()).await,
        (None, None, None) if page => return Err(login::to_form()),
        (None, None, None) => return Err(challenge()),
    };
    let Ok(principal) = login else {
        return Err(challenge());
    };
    let reads = req.method() == Method::GET || req.method() == Method::HEAD;
    let allowed = principal.has_tag(Tag::Administrator)
        || principal.has_tag(Tag::Management)
        || (reads && principal.has_tag(Tag::Monitoring));
    if !allowed {
        tracing::warn!(target: "audit", event = "access_refused", user = %principal.user, %peer, path, "HTTP request refused: tags");
        return Err(plain(
            StatusCode::FORBIDDEN,
            "this user's tags do not allow the management API\n",
        ));
    }
    Ok(Some(principal))
}

/// Whether `principal` may use the management page at all (reading, at least).
pub(super) fn may_manage(principal: &Principal) -> bool {
    [Tag::Administrator, Tag::Management, Tag::Monitoring]
        .into_iter()
        .any(|tag| principal.has_tag(tag))
}

/// Headers every response carries: no framing (clickjacking), no scripts from elsewhere.
pub(super) fn harden(response: &mut Response<Full<Bytes>>) {
    let headers = response.headers_mut();
    headers.insert("x-frame-options", HeaderValue::from_static("DENY"));
    headers.insert(
        "content-security-policy",
        HeaderValue::from_static("default-src 'self'; frame-ancestors 'none'"),
    );
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
}

fn challenge() -> Response<Full<Bytes>> {
    let mut response = plain(StatusCode::UNAUTHORIZED, "log in with a broker user\n");
    response.headers_mut().insert(
        "www-authenticate",
        HeaderValue::from_static("Basic realm=\"broker\", charset=\"UTF-8\""),
    );
    response
}

fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    response
}
