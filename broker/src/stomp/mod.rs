//! STOMP 1.0–1.2, a thin front end over the broker's operations (docs/stomp.md): over
//! TCP ([`listener`]) and over the WebSocket listener when the client offers a STOMP
//! subprotocol. Each frame that acts on broker state becomes the [`crate::protocol::Op`]
//! a JSON client would send, authorized and qualified for the vhost by the same
//! authenticator, and goes to the router like any connection's request; destinations
//! follow RabbitMQ's Web-STOMP.

mod connect;
mod destinations;
pub(crate) mod frame;
mod headers;
pub(crate) mod listener;
mod queue_properties;
mod session;
mod transport;
mod writer;

pub use connect::MIN_HEARTBEAT;
pub use destinations::{REPLY_QUEUE_PREFIX, SUBSCRIPTION_QUEUE_PREFIX, TOPIC_EXCHANGE};
pub(crate) use frame::Decoder as FrameDecoder;
pub use frame::{MAX_HEADER_BYTES, MAX_HEADERS};

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::server::Request as HsRequest;
use tokio_tungstenite::tungstenite::http::header::SEC_WEBSOCKET_PROTOCOL;

use crate::auth::Authenticator;
use crate::queue::ConnId;
use crate::router::RouterHandle;

/// The WebSocket subprotocols of STOMP, preferred first.
pub const SUBPROTOCOLS: [&str; 3] = ["v12.stomp", "v11.stomp", "v10.stomp"];

/// What every STOMP connection works with.
pub(crate) struct Context {
    pub router: RouterHandle,
    pub auth: Arc<Authenticator>,
    /// Largest frame body.
    pub max_frame_bytes: usize,
    /// How long a client may take to send CONNECT.
    pub handshake_timeout: Duration,
    pub max_unconfirmed: usize,
    /// The broker's memory alarm (true while raised).
    pub alarm: watch::Receiver<bool>,
    pub shutdown: watch::Receiver<bool>,
}

/// The STOMP subprotocol to answer a WebSocket upgrade with, when it offers one.
pub fn offered_subprotocol(request: &HsRequest) -> Option<&'static str> {
    let offered: Vec<&str> = request
        .headers()
        .get_all(SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|list| list.split(','))
        .map(str::trim)
        .collect();
    SUBPROTOCOLS.into_iter().find(|name| offered.contains(name))
}

/// Serves a WebSocket whose upgrade chose a STOMP subprotocol: STOMP frames in its text
/// and binary messages. `credentials` are the upgrade's HTTP Basic ones, used when
/// CONNECT has no `login`.
pub(crate) async fn serve_websocket<S>(
    ws: WebSocketStream<S>,
    peer: SocketAddr,
    conn: ConnId,
    ctx: Arc<Context>,
    credentials: Option<(String, String)>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (source, sink) = transport::split_websocket(ws);
    let login = connect::TransportLogin::upgrade(credentials);
    session::serve(source, sink, peer, conn, ctx, login).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_highest_offered_stomp_version_is_chosen() {
        let offer = |values: &[&str]| {
            let mut request = HsRequest::new(());
            for value in values {
                request
                    .headers_mut()
                    .append(SEC_WEBSOCKET_PROTOCOL, value.parse().unwrap());
            }
            offered_subprotocol(&request)
        };
        assert_eq!(
            offer(&["v10.stomp, v11.stomp, v12.stomp"]),
            Some("v12.stomp")
        );
        assert_eq!(offer(&["v10.stomp", "v11.stomp"]), Some("v11.stomp"));
        assert_eq!(offer(&["broker-binary.v1"]), None);
        assert_eq!(offer(&[]), None);
    }
}
