//! Reading and writing AMQP frames. `amq-protocol` parses and serialises every method and
//! content header; this file owns only the framing around it: the frame size limit, the
//! frame-end octet, and which failure is which connection exception.

use amq_protocol::frame::{AMQPContentHeader, AMQPFrame, gen_frame};
use amq_protocol::protocol::{AMQPClass, parse_class};
use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt};

use super::errors::{AmqpError, code};
use super::hot::{self, HotMethod};

/// The octet that ends every frame.
const FRAME_END: u8 = 0xCE;
/// Frame type, channel, payload size.
const FRAME_HEADER_LEN: usize = 7;
/// Header and frame-end octet around a payload.
pub const FRAME_OVERHEAD: u32 = 8;

/// A frame from the client.
#[derive(Debug)]
pub enum Incoming {
    Method(u16, Box<AMQPClass>),
    /// A publish or settling method on a channel, read by its fixed layout (`hot.rs`).
    Hot(u16, HotMethod),
    Header(u16, Box<AMQPContentHeader>),
    Body(u16, Bytes),
    Heartbeat,
}

/// Why no frame could be read.
#[derive(Debug)]
pub enum ReadError {
    /// The peer closed or the socket failed.
    Closed(std::io::Error),
    /// The bytes are not a valid frame: a connection exception.
    Invalid(AmqpError),
}

impl From<std::io::Error> for ReadError {
    fn from(e: std::io::Error) -> Self {
        ReadError::Closed(e)
    }
}

fn frame_error(text: impl std::fmt::Display) -> ReadError {
    ReadError::Invalid(AmqpError::connection(
        code::FRAME_ERROR,
        "FRAME_ERROR",
        text,
    ))
}

/// Checks a frame's header (type, channel, payload size) against `frame_max` (header and
/// frame end included; 0 means no limit): the kind, channel and payload size.
fn check_header(
    header: &[u8; FRAME_HEADER_LEN],
    frame_max: u32,
) -> Result<(u8, u16, usize), ReadError> {
    let kind = header[0];
    let channel = u16::from_be_bytes([header[1], header[2]]);
    let size = u32::from_be_bytes([header[3], header[4], header[5], header[6]]);
    if !matches!(kind, 1 | 2 | 3 | 8) {
        return Err(frame_error(format_args!("unknown frame type {kind}")));
    }
    if frame_max != 0 && u64::from(size) + u64::from(FRAME_OVERHEAD) > u64::from(frame_max) {
        return Err(frame_error(format_args!(
            "frame of {} bytes exceeds the negotiated frame_max of {frame_max}",
            u64::from(size) + u64::from(FRAME_OVERHEAD)
        )));
    }
    Ok((kind, channel, size as usize))
}

/// Reads one frame of at most `frame_max` bytes (header and frame end included; 0 means
/// no limit).
pub async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    frame_max: u32,
) -> Result<Incoming, ReadError> {
    let mut header = [0u8; FRAME_HEADER_LEN];
    reader.read_exact(&mut header).await?;
    let (kind, channel, size) = check_header(&header, frame_max)?;
    let mut payload = vec![0u8; size];
    reader.read_exact(&mut payload).await?;
    if reader.read_u8().await? != FRAME_END {
        return Err(frame_error("frame does not end with 0xCE"));
    }
    match kind {
        // A body keeps its own buffer.
        3 => Ok(Incoming::Body(channel, Bytes::from(payload))),
        _ => parse_payload(kind, channel, &payload),
    }
}

/// The first frame in `buf` and the bytes it took, when `buf` holds all of it; `None`
/// when more bytes are needed. A header that is already invalid is an error at once, as
/// [`read_frame`] would find it.
pub fn decode(buf: &[u8], frame_max: u32) -> Result<Option<(Incoming, usize)>, ReadError> {
    let Some(header) = buf.first_chunk::<FRAME_HEADER_LEN>() else {
        return Ok(None);
    };
    let (kind, channel, size) = check_header(header, frame_max)?;
    let Some(rest) = buf[FRAME_HEADER_LEN..].get(..=size) else {
        return Ok(None);
    };
    let (payload, end) = rest.split_at(size);
    if end[0] != FRAME_END {
        return Err(frame_error("frame does not end with 0xCE"));
    }
    let frame = match kind {
        3 => Incoming::Body(channel, Bytes::copy_from_slice(payload)),
        _ => parse_payload(kind, channel, payload)?,
    };
    Ok(Some((frame, FRAME_HEADER_LEN + size + 1)))
}

/// A frame's payload, once its header and frame end were checked.
fn parse_payload(kind: u8, channel: u16, payload: &[u8]) -> Result<Incoming, ReadError> {
    match kind {
        // Channel 0 takes the generic path, whose errors say what a basic method there is.
        1 => match channel {
            0 => parse_method(channel, payload),
            _ => match hot::parse_method(payload) {
                Some(method) => Ok(Incoming::Hot(channel, method)),
                None => parse_method(channel, payload),
            },
        },
        2 => {
            use amq_protocol::frame::parsing::parse_content_header;
            match parse_content_header(payload) {
                Ok(([], header)) => Ok(Incoming::Header(channel, Box::new(header))),
                _ => Err(syntax_error("malformed content header")),
            }
        }
        3 => Ok(Incoming::Body(channel, Bytes::copy_from_slice(payload))),
        _ if channel != 0 => Err(frame_error(format_args!(
            "heartbeat on channel {channel} (must be 0)"
        ))),
        _ => Ok(Incoming::Heartbeat),
    }
}

fn syntax_error(text: impl std::fmt::Display) -> ReadError {
    ReadError::Invalid(AmqpError::connection(
        code::SYNTAX_ERROR,
        "SYNTAX_ERROR",
        text,
    ))
}

fn parse_method(channel: u16, payload: &[u8]) -> Result<Incoming, ReadError> {
    let (Some(class), Some(method)) = (
        payload.get(0..2).map(|b| u16::from_be_bytes([b[0], b[1]])),
        payload.get(2..4).map(|b| u16::from_be_bytes([b[0], b[1]])),
    ) else {
        return Err(syntax_error(
            "method frame shorter than its class and method ids",
        ));
    };
    match parse_class(payload) {
        Ok(([], parsed)) => Ok(Incoming::Method(channel, Box::new(parsed))),
        _ if !is_known_method(class, method) => Err(ReadError::Invalid(
            AmqpError::connection(
                code::NOT_IMPLEMENTED,
                "NOT_IMPLEMENTED",
                format_args!("unknown class/method {class}/{method}"),
            )
            .during(class, method),
        )),
        _ => Err(ReadError::Invalid(
            AmqpError::connection(
                code::SYNTAX_ERROR,
                "SYNTAX_ERROR",
                format_args!("malformed arguments of method {class}/{method}"),
            )
            .during(class, method),
        )),
    }
}

/// Whether AMQP 0-9-1 (with RabbitMQ's extensions) defines this method.
fn is_known_method(class: u16, method: u16) -> bool {
    let methods: &[u16] = match class {
        10 => &[10, 11, 20, 21, 30, 31, 40, 41, 50, 51, 60, 61, 70, 71],
        20 => &[10, 11, 20, 21, 40, 41],
        30 => &[10, 11],
        40 => &[10, 11, 20, 21, 30, 31, 40, 51],
        50 => &[10, 11, 20, 21, 30, 31, 40, 41, 50, 51],
        60 => &[
            10, 11, 20, 21, 30, 31, 40, 50, 60, 70, 71, 72, 80, 90, 100, 110, 111, 120,
        ],
        85 => &[10, 11],
        90 => &[10, 11, 20, 21, 30, 31],
        _ => &[],
    };
    methods.contains(&method)
}

/// Appends a frame's encoding to `out`.
pub fn encode(frame: &AMQPFrame, out: &mut Vec<u8>) {
    let buffer = std::mem::take(out);
    let (buffer, _) = gen_frame(frame)(buffer.into())
        .expect("writing a frame to a Vec cannot fail")
        .into_inner();
    *out = buffer;
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::protocol::channel;

    async fn read(bytes: &[u8], frame_max: u32) -> Result<Incoming, ReadError> {
        read_frame(&mut &bytes[..], frame_max).await
    }

    fn invalid_code(result: Result<Incoming, ReadError>) -> u16 {
        match result {
            Err(ReadError::Invalid(e)) => e.code(),
            other => panic!("expected a connection exception, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn frames_are_checked_before_they_are_parsed() {
        let mut ok = Vec::new();
        encode(
            &AMQPFrame::Method(
                3,
                AMQPClass::Channel(channel::AMQPMethod::Open(Default::default())),
            ),
            &mut ok,
        );
        assert!(matches!(read(&ok, 0).await, Ok(Incoming::Method(3, _))));
        // Too big for the limit, a bad frame end, an unknown type.
        assert_eq!(invalid_code(read(&ok, 8).await), 501);
        let mut bad_end = ok.clone();
        *bad_end.last_mut().unwrap() = 0;
        assert_eq!(invalid_code(read(&bad_end, 0).await), 501);
        let mut bad_type = ok.clone();
        bad_type[0] = 7;
        assert_eq!(invalid_code(read(&bad_type, 0).await), 501);
        // Unknown class: 540; a known method with truncated arguments: 502.
        let unknown = [1, 0, 1, 0, 0, 0, 4, 0, 99, 0, 10, 0xCE];
        assert_eq!(invalid_code(read(&unknown, 0).await), 540);
        let truncated = [1, 0, 1, 0, 0, 0, 5, 0, 50, 0, 10, 0, 0xCE];
        assert_eq!(invalid_code(read(&truncated, 0).await), 502);
        let heartbeat_on_channel = [8, 0, 1, 0, 0, 0, 0, 0xCE];
        assert_eq!(invalid_code(read(&heartbeat_on_channel, 0).await), 501);
        assert!(matches!(
            read(&[8, 0, 0, 0, 0, 0, 0, 0xCE], 0).await,
            Ok(Incoming::Heartbeat)
        ));
    }
}
