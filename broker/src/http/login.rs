//! Logging in to the management page: a form posting `user` and `password` to `/login`
//! opens a session ([`super::sessions`]) whose token the browser keeps in the
//! `broker_session` cookie — `HttpOnly` (scripts cannot read it), `SameSite=Strict` (other
//! sites' pages cannot make the browser send it), `Path=/`, and `Secure` over TLS.
//! `POST /logout` ends it. The API takes the cookie and HTTP Basic credentials alike.

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE, COOKIE, HeaderValue, LOCATION, SET_COOKIE};
use hyper::{Method, Request, Response, StatusCode};

use super::sessions::Login;
use super::{HttpResponse, HttpState, MAX_BODY_BYTES, parse_query};
use crate::auth::{AuthError, Principal};

/// The session cookie's name.
pub(super) const COOKIE_NAME: &str = "broker_session";

const LOGIN_HTML: &str = include_str!("page/login.html");

/// Requests that need no login: the form, logging in and out, and the form's stylesheet.
pub(super) fn is_public(method: &Method, path: &str) -> bool {
    let get = method == Method::GET || method == Method::HEAD;
    let post = method == Method::POST;
    matches!(
        (path, get, post),
        ("/login", true, _) | ("/style.css", true, _) | ("/login" | "/logout", _, true)
    )
}

/// The page a browser without a session is sent to instead of the management page.
pub(super) fn is_page(method: &Method, path: &str) -> bool {
    (method == Method::GET || method == Method::HEAD) && (path == "/" || path == "/index.html")
}

/// The login form, with a message above it.
pub(super) fn form(status: StatusCode, message: Option<&'static str>) -> HttpResponse {
    let message = message
        .map(|m| format!("<p class=\"error\">{m}</p>"))
        .unwrap_or_default();
    let html = LOGIN_HTML.replace("<!--message-->", &message);
    let mut response = Response::new(Full::new(Bytes::from(html)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// `See Other` to the login form (a browser asking for the page without a session).
pub(super) fn to_form() -> HttpResponse {
    redirect("/login")
}

/// `POST /login`: checks the form's user and password (slowed down after failures from
/// the same address, audited, as every login) and, for a user tagged for management,
/// opens a session and sends the browser to the page with its cookie.
pub(super) async fn log_in(
    state: &HttpState,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> HttpResponse {
    let body = match Limited::new(req.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(_) => return form(StatusCode::BAD_REQUEST, Some("The form could not be read.")),
    };
    let fields = parse_query(&String::from_utf8_lossy(&body));
    let field = |name: &str| {
        fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    let (Some(user), Some(password)) = (field("user"), field("password")) else {
        return form(
            StatusCode::BAD_REQUEST,
            Some("Enter a user name and a password."),
        );
    };
    let principal = match state.auth.authenticate(user, password, peer.ip()).await {
        Ok(principal) => principal,
        Err(AuthError::LoopbackOnly(_)) => {
            return form(
                StatusCode::FORBIDDEN,
                Some("This user may only log in from the broker's own machine."),
            );
        }
        Err(_) => {
            return form(
                StatusCode::UNAUTHORIZED,
                Some("Invalid user name or password."),
            );
        }
    };
    if !super::access::may_manage(&principal) {
        tracing::warn!(target: "audit", event = "access_refused", user = %principal.user, %peer, "management login refused: tags");
        return form(
            StatusCode::FORBIDDEN,
            Some("This user's tags do not allow the management page."),
        );
    }
    // The password as it verified (a change meanwhile ends the session at its first use).
    let Some(record) = state.auth.get(&principal.user) else {
        return form(
            StatusCode::UNAUTHORIZED,
            Some("Invalid user name or password."),
        );
    };
    let token = state.sessions.open(Login {
        user: principal.user.clone(),
        password_hash: record.password_hash.into(),
    });
    tracing::info!(target: "audit", event = "authenticated", user = %principal.user, %peer, method = "management_login", "management page login");
    let mut response = redirect("/");
    let cookie = cookie(state, &format!("{COOKIE_NAME}={token}"));
    response.headers_mut().insert(SET_COOKIE, cookie);
    response
}

/// `POST /logout`: ends the session the cookie names and clears the cookie.
pub(super) fn log_out<B>(state: &HttpState, req: &Request<B>) -> HttpResponse {
    if let Some(token) = session_token(req) {
        state.sessions.close(token);
    }
    let mut response = redirect("/login");
    let cleared = cookie(state, &format!("{COOKIE_NAME}=; Max-Age=0"));
    response.headers_mut().insert(SET_COOKIE, cleared);
    response
}

/// The session token of the request's `broker_session` cookie, if it has one.
pub(super) fn session_token<B>(req: &Request<B>) -> Option<&str> {
    req.headers()
        .get_all(COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE_NAME)
        .map(|(_, token)| token)
}

/// The user a live session belongs to, as it is now (its tags may have changed). A
/// deleted user's sessions end, and so do they when its password changes; a
/// loopback-only user stays on loopback.
pub(super) fn resume(state: &HttpState, token: &str, peer: SocketAddr) -> Option<Principal> {
    let login = state.sessions.login(token)?;
    let record = state.auth.get(&login.user)?;
    if *record.password_hash != *login.password_hash {
        state.sessions.close(token);
        return None;
    }
    if record.loopback_only && !peer.ip().is_loopback() {
        return None;
    }
    Some(Principal {
        user: login.user,
        tags: record.tags,
    })
}

/// A `Set-Cookie` value: `pair` with the session cookie's attributes.
fn cookie(state: &HttpState, pair: &str) -> HeaderValue {
    let secure = if state.tls.is_some() { "; Secure" } else { "" };
    let value = format!("{pair}; HttpOnly; SameSite=Strict; Path=/{secure}");
    HeaderValue::from_str(&value).expect("tokens are base64url")
}

fn redirect(to: &'static str) -> HttpResponse {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::SEE_OTHER;
    let headers = response.headers_mut();
    headers.insert(LOCATION, HeaderValue::from_static(to));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
