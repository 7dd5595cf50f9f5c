//! The in-memory packing of a deep queue's ready message: its metadata and body in one
//! exact allocation, written and read by this process only (never stored, so the layout
//! can change between versions). Binary, not the storage encoding's JSON: packing and
//! unpacking run once per message of a deep transient queue, on its shard's thread.
//!
//! Layout: exchange and routing key (each `u32` length, bytes); a `u16` of which
//! properties are present (bit 0 `persistent`); each present property in field order
//! (strings `u32` length and bytes, `priority` one byte, times `u64`); the headers as JSON
//! (`u32` length, 0 for none); the body to the end. Integers little-endian.

use bytes::Bytes;

use crate::message::{Headers, Message, Properties};

const PERSISTENT: u16 = 1;

/// Appends `message` packed to `out`.
pub(super) fn pack(message: &Message, out: &mut Vec<u8>) {
    put_str(out, &message.exchange);
    put_str(out, &message.routing_key);
    let p = &message.properties;
    let strings = [
        &p.message_id,
        &p.correlation_id,
        &p.reply_to,
        &p.content_type,
    ];
    let times = [p.expiration_ms, p.timestamp, p.delay_ms];
    let more_strings = [
        &p.content_encoding,
        &p.kind,
        &p.user_id,
        &p.app_id,
        &p.cluster_id,
    ];
    // Bits in field order: persistent, 4 strings, priority, 3 times, 5 strings.
    let present = (strings.iter().map(|s| s.is_some()))
        .chain([p.priority.is_some()])
        .chain(times.iter().map(Option::is_some))
        .chain(more_strings.iter().map(|s| s.is_some()));
    let flags = present
        .enumerate()
        .fold(u16::from(p.persistent), |flags, (i, is)| {
            flags | (u16::from(is) << (i + 1))
        });
    out.extend_from_slice(&flags.to_le_bytes());
    for s in strings.into_iter().flatten() {
        put_str(out, s);
    }
    out.extend(p.priority);
    for t in times.into_iter().flatten() {
        out.extend_from_slice(&t.to_le_bytes());
    }
    for s in more_strings.into_iter().flatten() {
        put_str(out, s);
    }
    if message.headers.is_empty() {
        out.extend_from_slice(&0u32.to_le_bytes());
    } else {
        let at = out.len();
        out.extend_from_slice(&[0; 4]);
        serde_json::to_writer(&mut *out, &message.headers).expect("writing to a Vec");
        let len = (out.len() - at - 4) as u32;
        out[at..at + 4].copy_from_slice(&len.to_le_bytes());
    }
    out.extend_from_slice(&message.body);
}

/// The message [`pack`] packed into `bytes`.
pub(super) fn unpack(bytes: &[u8]) -> Message {
    let mut r = Reader(bytes);
    let exchange = r.string();
    let routing_key = r.string();
    let flags = u16::from_le_bytes(r.take());
    let mut bit = 0;
    let mut has = || {
        bit += 1;
        flags & (1 << bit) != 0
    };
    let mut properties = Properties {
        persistent: flags & PERSISTENT != 0,
        ..Default::default()
    };
    let p = &mut properties;
    for s in [
        &mut p.message_id,
        &mut p.correlation_id,
        &mut p.reply_to,
        &mut p.content_type,
    ] {
        *s = has().then(|| r.string());
    }
    p.priority = has().then(|| r.take::<1>()[0]);
    for t in [&mut p.expiration_ms, &mut p.timestamp, &mut p.delay_ms] {
        *t = has().then(|| u64::from_le_bytes(r.take()));
    }
    for s in [
        &mut p.content_encoding,
        &mut p.kind,
        &mut p.user_id,
        &mut p.app_id,
        &mut p.cluster_id,
    ] {
        *s = has().then(|| r.string());
    }
    let headers = match r.slice() {
        [] => Headers::new(),
        json => serde_json::from_slice(json).expect("headers packed as JSON by `pack`"),
    };
    Message {
        exchange,
        routing_key,
        headers,
        properties,
        body: Bytes::copy_from_slice(r.0),
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// Reads what [`pack`] wrote; a short read is a bug in this file, hence the panics.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let (head, rest) = self.0.split_first_chunk::<N>().expect("packed by `pack`");
        self.0 = rest;
        *head
    }

    fn slice(&mut self) -> &'a [u8] {
        let len = u32::from_le_bytes(self.take()) as usize;
        let (head, rest) = self.0.split_at(len);
        self.0 = rest;
        head
    }

    fn string(&mut self) -> String {
        String::from_utf8(self.slice().to_vec()).expect("packed from a String")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(message: &Message) {
        let mut packed = vec![0xAA]; // appends, after what the buffer held
        pack(message, &mut packed);
        assert_eq!(&unpack(&packed[1..]), message);
    }

    #[test]
    fn a_plain_message_round_trips() {
        round_trip(&Message::text("orders", "hello"));
        round_trip(&Message::text("", ""));
    }

    #[test]
    fn every_property_header_and_binary_body_round_trips() {
        let mut headers = Headers::new();
        headers.insert("x-retry".into(), serde_json::json!({"n": [1, "two"]}));
        let some = |s: &str| Some(s.to_string());
        let message = Message {
            exchange: "events".into(),
            routing_key: "a.b.ü".into(),
            headers,
            properties: Properties {
                persistent: true,
                message_id: some("m1"),
                correlation_id: some("c1"),
                reply_to: some("r"),
                content_type: some("application/json"),
                priority: Some(7),
                expiration_ms: Some(60_000),
                timestamp: Some(u64::MAX),
                delay_ms: Some(0),
                content_encoding: some("gzip"),
                kind: some("order.created"),
                user_id: some("guest"),
                app_id: some("shop"),
                cluster_id: some(""),
            },
            body: Bytes::from_static(&[0, 0xff, 1, 0xfe]),
        };
        round_trip(&message);
    }

    #[test]
    fn each_property_alone_round_trips() {
        let all = [
            |p: &mut Properties| p.message_id = Some("m".into()),
            |p: &mut Properties| p.reply_to = Some("r".into()),
            |p: &mut Properties| p.priority = Some(0),
            |p: &mut Properties| p.timestamp = Some(1),
            |p: &mut Properties| p.delay_ms = Some(2),
            |p: &mut Properties| p.cluster_id = Some("c".into()),
        ];
        for set in all {
            let mut message = Message::text("k", "body");
            set(&mut message.properties);
            round_trip(&message);
        }
    }
}
