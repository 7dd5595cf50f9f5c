//! One WebSocket connection of the client: opening it (credentials, subprotocol, TLS),
//! what goes out on it ([`Outgoing`]), and the reader task that hands each broker frame to
//! [`incoming::on_frame`](super::incoming::on_frame).

use std::sync::Arc;

use futures_util::StreamExt;
use futures_util::stream::{SplitSink, SplitStream};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use super::{ClientError, ClientTls, ConnectOptions, Returned, Shared, credentials, incoming, tls};
use crate::protocol::{BINARY_SUBPROTOCOL, Encoding, Request, decode_server_frames};
use crate::server::tls::MaybeTls;

pub(super) type Ws = WebSocketStream<MaybeTls>;
pub(super) type WsSink = SplitSink<Ws, WsMessage>;

/// Opens a connection to `url` as `options` say.
pub(super) async fn open(url: &str, options: &ConnectOptions) -> Result<Ws, ClientError> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
    use tokio_tungstenite::tungstenite::http::{HeaderValue, header};
    let connect_error = |reason: String| ClientError::Connect {
        url: url.to_owned(),
        reason,
    };
    let (bare_url, user_info) = credentials::split_user_info(url);
    let mut request = bare_url
        .into_client_request()
        .map_err(|e| connect_error(e.to_string()))?;
    // With a client certificate and no credentials in the URL, the certificate alone
    // logs in; otherwise the URL's credentials or the default user's.
    let certified = options.tls.as_ref().is_some_and(ClientTls::has_identity);
    let login = match user_info {
        Some(credentials) => Some(credentials),
        None if certified => None,
        None => Some(credentials::default_credentials()),
    };
    if let Some((user, password)) = login {
        let authorization = credentials::basic_header(&user, &password)
            .parse()
            .map_err(|_| connect_error("credentials not valid in a header".into()))?;
        request
            .headers_mut()
            .insert(header::AUTHORIZATION, authorization);
    }
    if options.encoding == Encoding::Binary {
        request.headers_mut().insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(BINARY_SUBPROTOCOL),
        );
    }
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(crate::protocol::READ_BUFFER_BYTES);
    let stream = tls::open_stream(request.uri(), options.tls.as_ref())
        .await
        .map_err(connect_error)?;
    let (ws, _) = tokio_tungstenite::client_async_with_config(request, stream, Some(config))
        .await
        .map_err(|e| connect_error(e.to_string()))?;
    Ok(ws)
}

/// What a request is, for what happens to it when the connection drops before its reply:
/// publishes and declarations wait for the next connection (made again there, as they
/// would be if nothing had happened), acks are dropped (the broker redelivers), other
/// requests fail with [`ClientError::Disconnected`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Class {
    Publish,
    /// Declaring a named queue or an exchange, or binding: made twice, it does what it
    /// did once.
    Declare,
    Settle,
    Other,
}

impl Class {
    pub fn of(op: &crate::protocol::Op) -> Class {
        use crate::protocol::Op;
        match op {
            Op::Publish(_) => Class::Publish,
            Op::Ack { .. } | Op::Nack { .. } | Op::Reject { .. } => Class::Settle,
            Op::DeclareQueue(declare) if !declare.queue.is_empty() => Class::Declare,
            Op::DeclareExchange(_) | Op::Bind(_) | Op::BindExchange(_) => Class::Declare,
            _ => Class::Other,
        }
    }

    /// Whether it waits for the next connection rather than failing with the drop.
    pub fn waits(self) -> bool {
        matches!(self, Class::Publish | Class::Declare)
    }
}

/// One request for the connection task to write.
pub(super) struct Outgoing {
    pub id: u64,
    pub class: Class,
    pub frame: Frame,
}

/// A JSON text frame, or a request to pack as a binary record.
// In binary mode records are nearly all of the traffic: boxing them would only add an
// allocation per publish.
#[allow(clippy::large_enum_variant)]
pub(super) enum Frame {
    Text(String),
    Record(Request),
}

/// Resolves, with why, when a connection's reader task ends (the connection is gone).
pub(super) struct ReaderEnd {
    rx: oneshot::Receiver<String>,
    reason: Option<String>,
}

impl ReaderEnd {
    pub async fn wait(&mut self) -> String {
        if self.reason.is_none() {
            let reason = (&mut self.rx)
                .await
                .unwrap_or_else(|_| "the reader stopped".into());
            self.reason = Some(reason);
        }
        self.reason.clone().unwrap_or_default()
    }
}

/// Spawns the task reading connection number `generation`'s frames.
pub(super) fn spawn_reader(
    mut source: SplitStream<Ws>,
    shared: Arc<Shared>,
    returns: mpsc::UnboundedSender<Returned>,
    generation: u64,
) -> (tokio::task::JoinHandle<()>, ReaderEnd) {
    let (end_tx, rx) = oneshot::channel();
    let reader = tokio::spawn(async move {
        let reason = loop {
            let frame = match source.next().await {
                Some(Ok(frame)) => frame,
                Some(Err(e)) => break e.to_string(),
                None => break "the connection closed".to_owned(),
            };
            match frame {
                WsMessage::Text(text) => match crate::protocol::parse_server_frame(&text) {
                    Ok(frame) => incoming::on_frame(&shared, &returns, frame, generation),
                    Err(e) => tracing::warn!(error = %e, "undecodable frame from broker"),
                },
                WsMessage::Binary(bytes) => {
                    for frame in decode_server_frames(&bytes) {
                        match frame {
                            Ok(frame) => incoming::on_frame(&shared, &returns, frame, generation),
                            Err(e) => tracing::warn!(error = %e, "undecodable record from broker"),
                        }
                    }
                }
                WsMessage::Close(_) => break "the broker closed the connection".to_owned(),
                _ => {}
            }
        };
        let _ = end_tx.send(reason);
    });
    (reader, ReaderEnd { rx, reason: None })
}
