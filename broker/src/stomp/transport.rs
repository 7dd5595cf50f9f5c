//! What STOMP frames travel on: a byte stream (TCP) or WebSocket messages, each of which
//! may hold several frames or part of one. Generic over the stream, so TLS can wrap it.

use bytes::{Bytes, BytesMut};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{
    AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter, ReadHalf, WriteHalf,
};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::{Message as WsMessage, Utf8Bytes};

/// Bytes read from a TCP socket at once at most.
const READ_CHUNK: usize = 32 * 1024;

/// The incoming half.
pub(crate) enum Source<S> {
    Stream(ReadHalf<S>),
    WebSocket(SplitStream<WebSocketStream<S>>),
}

/// The outgoing half.
pub(crate) enum Sink<S> {
    Stream(BufWriter<WriteHalf<S>>),
    WebSocket(SplitSink<WebSocketStream<S>, WsMessage>),
}

/// What one read brought.
pub(crate) enum Read {
    /// Bytes appended to the buffer (or a WebSocket ping or pong: the peer is alive).
    Data,
    Closed,
}

pub(crate) fn split_stream<S>(stream: S) -> (Source<S>, Sink<S>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (read, write) = tokio::io::split(stream);
    (Source::Stream(read), Sink::Stream(BufWriter::new(write)))
}

pub(crate) fn split_websocket<S>(ws: WebSocketStream<S>) -> (Source<S>, Sink<S>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (sink, source) = ws.split();
    (Source::WebSocket(source), Sink::WebSocket(sink))
}

impl<S: AsyncRead + AsyncWrite + Unpin> Source<S> {
    /// Appends what arrives next to `buf`.
    pub async fn read(&mut self, buf: &mut BytesMut) -> Result<Read, String> {
        match self {
            Source::Stream(stream) => {
                buf.reserve(READ_CHUNK);
                match stream.read_buf(buf).await {
                    Ok(0) => Ok(Read::Closed),
                    Ok(_) => Ok(Read::Data),
                    Err(e) => Err(e.to_string()),
                }
            }
            Source::WebSocket(ws) => match ws.next().await {
                Some(Ok(WsMessage::Text(text))) => {
                    buf.extend_from_slice(text.as_bytes());
                    Ok(Read::Data)
                }
                Some(Ok(WsMessage::Binary(bytes))) => {
                    buf.extend_from_slice(&bytes);
                    Ok(Read::Data)
                }
                Some(Ok(WsMessage::Close(_))) | None => Ok(Read::Closed),
                Some(Ok(_)) => Ok(Read::Data),
                Some(Err(e)) => Err(e.to_string()),
            },
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Sink<S> {
    /// Queues one frame (or heart-beat) for the next flush. Over WebSocket each is one
    /// message: text when it is UTF-8, binary otherwise.
    pub async fn feed(&mut self, frame: Bytes) -> Result<(), String> {
        match self {
            Sink::Stream(stream) => stream.write_all(&frame).await.map_err(|e| e.to_string()),
            Sink::WebSocket(ws) => {
                let message = match Utf8Bytes::try_from(frame.clone()) {
                    Ok(text) => WsMessage::Text(text),
                    Err(_) => WsMessage::Binary(frame),
                };
                ws.feed(message).await.map_err(|e| e.to_string())
            }
        }
    }

    pub async fn flush(&mut self) -> Result<(), String> {
        match self {
            Sink::Stream(stream) => stream.flush().await.map_err(|e| e.to_string()),
            Sink::WebSocket(ws) => ws.flush().await.map_err(|e| e.to_string()),
        }
    }

    /// Flushes and closes (a WebSocket close frame, or the TCP write side).
    pub async fn close(&mut self) {
        let _ = self.flush().await;
        match self {
            Sink::Stream(stream) => {
                let _ = stream.shutdown().await;
            }
            Sink::WebSocket(ws) => {
                let _ = ws.send(WsMessage::Close(None)).await;
            }
        }
    }
}
