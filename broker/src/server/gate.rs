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

impl Gate {
    /// Checks the upgrade request's `Origin`; returns its Basic credentials, if any.
    // tungstenite's callback error type.
    #[allow(clippy::result_large_err)]
    pub fn check_upgrade(
        &self,
        request: &HsRequest,
    ) -> Result<Option<(String, String)>, ErrorResponse> {
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
        Ok(credentials)
    }
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
