//! AMQP over WebSocket: a WebSocket upgrade offering the `amqp` subprotocol (as
//! RabbitMQ's Web AMQP plugin and browser AMQP clients use it) carries AMQP frames in
//! binary messages. The bytes are pumped to and from an in-memory pipe that the ordinary
//! AMQP connection task serves, so the protocol, login and limits are exactly those of
//! the TCP listener.

use std::net::SocketAddr;
use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use super::connection::{AmqpContext, serve};
use crate::queue::ConnId;

/// The WebSocket subprotocol that selects AMQP 0-9-1.
pub const AMQP_SUBPROTOCOL: &str = "amqp";

/// Bytes in flight between the WebSocket and the AMQP connection task, each way.
const PIPE_BYTES: usize = 64 * 1024;

/// Serves an upgraded WebSocket as an AMQP connection until either side ends.
pub(crate) async fn serve_websocket<S>(
    ws: WebSocketStream<S>,
    peer: SocketAddr,
    id: ConnId,
    ctx: Arc<AmqpContext>,
    shutdown: watch::Receiver<bool>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (ours, theirs) = tokio::io::duplex(PIPE_BYTES);
    let (mut sink, mut source) = ws.split();
    let (mut from_broker, mut to_broker) = tokio::io::split(theirs);
    let inbound = async move {
        while let Some(Ok(message)) = source.next().await {
            match message {
                WsMessage::Binary(bytes) if to_broker.write_all(&bytes).await.is_err() => break,
                WsMessage::Close(_) => break,
                // Pings are answered by the WebSocket layer; text carries no AMQP.
                _ => {}
            }
        }
        // The AMQP task reads end-of-stream: the client is gone.
        let _ = to_broker.shutdown().await;
    };
    let outbound = async move {
        let mut buffer = vec![0u8; PIPE_BYTES];
        loop {
            let n = match from_broker.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let message = WsMessage::Binary(buffer[..n].to_vec().into());
            if sink.send(message).await.is_err() {
                break;
            }
        }
        let _ = sink.close().await;
    };
    let pumps = async move {
        tokio::pin!(inbound, outbound);
        tokio::select! {
            _ = &mut outbound => {}
            // The client went away: the AMQP task ends, and with it the outbound pump.
            _ = &mut inbound => outbound.await,
        }
    };
    tokio::join!(serve(ours, peer, id, ctx, shutdown, None), pumps);
}
