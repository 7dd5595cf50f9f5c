//! The front door of the WebSocket listener: which browser origins may connect, and who
//! the client is (HTTP Basic credentials on the upgrade request, or an `authenticate`
//! request as the first frame).

use std::sync::Arc;

use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request as HsRequest};
use tokio_tungstenite::tungstenite::http::header::{AUTHORIZATION, ORIGIN};
use tokio_tungstenite::tungstenite::http::{Response, StatusCode};

use crate::auth::{Authenticator, parse_basic};

pub(super) struct Gate {
    pub auth: Arc<Authenticator>,
    /// Origins (`scheme://host:port`) whose pages may open WebSocket connections.
    /// Requests without `Origin` come from programs, not browsers, and pass.
    pub allowed_origins: Vec<String>,
}

/// What the upgrade request says about its client: Basic credentials, if any, and the
/// vhost named by its path (`/` or none: the default vhost; `/prod`: `prod`; `/%2F`: `/`).
#[derive(Debug, Clone, Default)]
pub(super) struct Admitted {
    pub credentials: Option<(String, String)>,
    pub vhost: String,
    /// The client chose a STOMP subprotocol: the connection speaks STOMP (which names
    /// its vhost in CONNECT, not in the path).
    pub stomp: bool,
}

impl Gate {
    /// Checks the upgrade request's `Origin`; returns its credentials and vhost.
    // tungstenite's callback error type.
    #[allow(clippy::result_large_err)]
    pub fn check_upgrade(&self, request: &HsRequest) -> Result<Admitted, ErrorResponse> {
        if let Some(origin) = request.headers().get(ORIGIN) {
            let origin = origin.to_str().unwrap_or("").trim_end_matches('/');
            if !self
                .allowed_origins
                .iter()
                .any(|allowed| allowed.eq_ignore_ascii_case(origin))
            {
                tracing::warn!(target: "audit", event = "origin_refused", origin, "WebSocket upgrade refused: origin not allowed");
                return Err(refuse(
                    StatusCode::FORBIDDEN,
                    format!("origin `{origin}` may not connect (see --allowed-origin)"),
                ));
            }
        }
        let credentials = match request.headers().get(AUTHORIZATION) {
            None => None,
            Some(value) => match value.to_str().ok().and_then(parse_basic) {
                Some(credentials) => Some(credentials),
                None => {
                    return Err(refuse(
                        StatusCode::UNAUTHORIZED,
                        "the Authorization header must be HTTP Basic".into(),
                    ));
                }
            },
        };
        let vhost = vhost_from_path(request.uri().path()).ok_or_else(|| {
            refuse(
                StatusCode::BAD_REQUEST,
                "the path must name a vhost (percent-encoded UTF-8), or be `/`".into(),
            )
        })?;
        Ok(Admitted {
            credentials,
            vhost,
            stomp: false,
        })
    }
}

/// The vhost a request path names, as AMQP URIs do: the path without its leading `/`,
/// percent-decoded; empty means the default vhost.
fn vhost_from_path(path: &str) -> Option<String> {
    let encoded = path.strip_prefix('/').unwrap_or(path);
    if encoded.is_empty() {
        return Some(crate::vhost::DEFAULT_VHOST.to_string());
    }
    let bytes = encoded.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            decoded.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            decoded.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(decoded).ok()
}

fn refuse(status: StatusCode, text: String) -> ErrorResponse {
    let mut response = Response::new(Some(text));
    *response.status_mut() = status;
    response
}

/// The origins of the management page on `http` (its address as given, and `localhost`
/// for a loopback address; `https` with TLS): the default `--allowed-origin`.
pub fn management_origins(http: Option<std::net::SocketAddr>, tls: bool) -> Vec<String> {
    let Some(addr) = http else {
        return Vec::new();
    };
    let scheme = if tls { "https" } else { "http" };
    let mut origins = vec![format!("{scheme}://{addr}")];
    if addr.ip().is_loopback() {
        origins.push(format!("{scheme}://localhost:{}", addr.port()));
    }
    origins
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_vhosts() {
        assert_eq!(vhost_from_path("/").as_deref(), Some("/"));
        assert_eq!(vhost_from_path("").as_deref(), Some("/"));
        assert_eq!(vhost_from_path("/prod").as_deref(), Some("prod"));
        assert_eq!(vhost_from_path("/%2F").as_deref(), Some("/"));
        assert_eq!(vhost_from_path("/a%20b").as_deref(), Some("a b"));
        assert_eq!(vhost_from_path("/%zz"), None);
        assert_eq!(vhost_from_path("/%ff"), None);
    }

    #[test]
    fn the_page_origin_follows_the_listener_scheme() {
        let addr = "127.0.0.1:6790".parse().ok();
        assert_eq!(
            management_origins(addr, false),
            ["http://127.0.0.1:6790", "http://localhost:6790"]
        );
        assert_eq!(
            management_origins(addr, true),
            ["https://127.0.0.1:6790", "https://localhost:6790"]
        );
        assert!(management_origins(None, true).is_empty());
    }
}
