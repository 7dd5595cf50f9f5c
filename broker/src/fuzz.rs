//! Fuzz targets: each takes arbitrary bytes, feeds them to one decoder or boundary that
//! faces untrusted input, and checks its contract: a value or a typed error, never a
//! panic; and what it accepts, encoded again, is accepted again the same way. The same
//! functions run under `cargo fuzz` (`fuzz/`, nightly, as long as you like) and in
//! `tests/fuzz.rs` (stable, a bounded number of inputs in CI). See docs/testing.md.

use std::future::Future;
use std::task::{Context, Poll, Waker};

use bytes::BytesMut;

use crate::exchange::{Exchange, ExchangeError};
use crate::message::Message;
use crate::protocol::{
    ErrorCode, decode_requests, encode_request, parse_request, write_request_record,
};

/// The largest binary record the targets accept (the broker's default frame limit).
const MAX_RECORD_BYTES: usize = 1 << 20;

/// A JSON text frame, as a WebSocket client sends it.
pub fn json_request(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match parse_request(text) {
        Ok(request) => {
            let encoded = encode_request(&request);
            let again = parse_request(&encoded)
                .unwrap_or_else(|e| panic!("an encoded request does not parse: {encoded}: {e:?}"));
            assert_eq!(encode_request(&again), encoded, "encoding is not stable");
        }
        Err(e) => assert!(!e.message.is_empty(), "an error without a message"),
    }
}

/// A binary WebSocket message: request records.
pub fn binary_requests(data: &[u8]) {
    for record in decode_requests(data, MAX_RECORD_BYTES) {
        match record {
            Ok(request) => {
                let mut encoded = Vec::new();
                if !write_request_record(&mut encoded, &request) {
                    continue;
                }
                let again: Vec<_> = decode_requests(&encoded, MAX_RECORD_BYTES).collect();
                let [Ok(again)] = &again[..] else {
                    panic!("an encoded record does not decode to one request: {again:?}");
                };
                let mut twice = Vec::new();
                assert!(write_request_record(&mut twice, again));
                assert_eq!(twice, encoded, "encoding is not stable");
            }
            Err(e) => {
                assert!(!e.message.is_empty(), "an error without a message");
                assert!(
                    matches!(
                        e.code,
                        ErrorCode::MalformedBinary
                            | ErrorCode::FrameTooLarge
                            | ErrorCode::InvalidField
                            | ErrorCode::UnknownOp
                    ),
                    "unexpected code {:?}",
                    e.code
                );
            }
        }
    }
}

/// STOMP bytes from a TCP stream: the frames decoded are the same whether the bytes
/// arrive at once or split in two anywhere (the split point is the first byte).
pub fn stomp_frames(data: &[u8]) {
    let Some((&split, data)) = data.split_first() else {
        return;
    };
    let whole = stomp_decode(&[data]);
    let at = usize::from(split) * data.len() / 256;
    let (first, second) = data.split_at(at);
    let split = stomp_decode(&[first, second]);
    assert_eq!(whole, split, "decoding depends on how the bytes arrive");
}

/// Every frame decoded from `chunks` arriving one after another, and the error that
/// ended decoding (as text), if any.
fn stomp_decode(chunks: &[&[u8]]) -> (Vec<crate::stomp::frame::Frame>, Option<String>) {
    let mut decoder = crate::stomp::FrameDecoder::new(64 * 1024);
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => break,
                Err(e) => return (frames, Some(e.to_string())),
            }
        }
    }
    (frames, None)
}

/// AMQP 0-9-1 frames after the protocol header: each is a method, a content header, a
/// body or a heartbeat, or a connection exception with a reply code; a publish's content
/// header maps to a message or to a typed refusal.
pub fn amqp_frames(data: &[u8]) {
    let mut reader = data;
    loop {
        let read = crate::amqp::read_frame(&mut reader, 128 * 1024);
        match ready(read) {
            Ok(crate::amqp::Incoming::Header(_, header)) => {
                let mapped = crate::amqp::message_from_amqp(
                    "x",
                    "k",
                    &header.properties,
                    bytes::Bytes::new(),
                    "guest",
                );
                if let Err(e) = mapped {
                    assert!(e.code() >= 300, "reply code {}", e.code());
                }
            }
            Ok(_) => {}
            Err(crate::amqp::ReadError::Closed(_)) => return,
            Err(crate::amqp::ReadError::Invalid(e)) => {
                assert!(e.code() >= 300, "reply code {}", e.code());
                return;
            }
        }
    }
}

/// A data file of arbitrary bytes (written as a data dir's `broker.redb`): the store
/// opens it or refuses with an error, and what it recovers passes its own checks.
pub fn store_file(data: &[u8]) {
    let dir = std::env::temp_dir().join(format!(
        "broker-fuzz-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::create_dir_all(&dir).expect("create a temporary data dir");
    let file = dir.join(crate::store::DB_FILE);
    std::fs::write(&file, data).expect("write the data file");
    let opened = crate::store::open(&dir, |_| usize::MAX);
    if let Ok((_, writer)) = opened {
        writer.close();
        let report = crate::store::check(&dir);
        assert!(report.is_ok(), "a file the store opened fails its check");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The plugin boundary: `exchange` runs a plugin whose output is whatever the message
/// body says (tests/plugins/body-ids). It routes to bound ids only, within the limit, or
/// fails with a plugin error; a quarantined exchange is reset so the next input reaches
/// the plugin again.
pub fn route_output(exchange: &mut crate::plugin::PluginExchange, bound: &[u64], data: &[u8]) {
    let mut message = Message::text("fuzz", "");
    message.body = bytes::Bytes::copy_from_slice(data);
    let mut ids = Vec::new();
    match exchange.route(&message, &mut ids) {
        Ok(()) => assert!(
            ids.iter().all(|id| bound.contains(id)),
            "routed to an unbound id: {ids:?}"
        ),
        Err(ExchangeError::PluginFailed(reason)) => assert!(!reason.is_empty()),
        Err(ExchangeError::Unavailable(_)) => exchange.reset(),
        Err(other) => panic!("a route failed with {other:?}"),
    }
}

/// Polls a future that never waits (its reads come from a slice) to its end.
fn ready<T>(future: impl Future<Output = T>) -> T {
    let mut future = std::pin::pin!(future);
    let mut cx = Context::from_waker(Waker::noop());
    match future.as_mut().poll(&mut cx) {
        Poll::Ready(value) => value,
        Poll::Pending => panic!("reading from a slice waited"),
    }
}
