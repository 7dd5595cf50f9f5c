//! The frames every message crosses, read and written by their fixed layouts: the
//! `basic.publish` method frame and the settling methods (`basic.ack`, `nack`, `reject`)
//! from clients, and `basic.deliver` with its content header and body frames and the
//! confirm `basic.ack` to clients.
//!
//! `amq-protocol`'s generic codec builds an `AMQPClass` (and its strings) for every frame
//! and a `BasicProperties` for every content header, and copies each body piece into a
//! frame before serialising it; the profile showed that as most of the broker's extra CPU
//! per AMQP message over the JSON path. These read and write the bytes directly. Anything
//! they do not accept — another method, arguments that do not fit the layout exactly, a
//! header table, a short string over 255 bytes — goes to the generic codec, so what is
//! accepted, what it means and every error stay exactly the generic path's.

use amq_protocol::protocol::basic;

use crate::message::Message;

/// Frame types and the octet that ends every frame.
const FRAME_METHOD: u8 = 1;
const FRAME_HEADER: u8 = 2;
const FRAME_BODY: u8 = 3;
const FRAME_END: u8 = 0xCE;

/// The `basic` class and the methods read or written here.
const BASIC: u16 = 60;
const PUBLISH: u16 = 40;
const DELIVER: u16 = 60;
const ACK: u16 = 80;
const REJECT: u16 = 90;
const NACK: u16 = 120;

/// Property flags, from the highest bit down, in the order the properties are written.
mod flag {
    pub const CONTENT_TYPE: u16 = 1 << 15;
    pub const CONTENT_ENCODING: u16 = 1 << 14;
    // 1 << 13 is `headers`: a message with headers takes the generic codec.
    pub const DELIVERY_MODE: u16 = 1 << 12;
    pub const PRIORITY: u16 = 1 << 11;
    pub const CORRELATION_ID: u16 = 1 << 10;
    pub const REPLY_TO: u16 = 1 << 9;
    pub const EXPIRATION: u16 = 1 << 8;
    pub const MESSAGE_ID: u16 = 1 << 7;
    pub const TIMESTAMP: u16 = 1 << 6;
    pub const KIND: u16 = 1 << 5;
    pub const USER_ID: u16 = 1 << 4;
    pub const APP_ID: u16 = 1 << 3;
    pub const CLUSTER_ID: u16 = 1 << 2;
}

/// A client method read by its fixed layout.
#[derive(Debug)]
pub enum HotMethod {
    Publish(basic::Publish),
    Ack(basic::Ack),
    Nack(basic::Nack),
    Reject(basic::Reject),
}

impl HotMethod {
    pub fn ids(&self) -> (u16, u16) {
        let method = match self {
            HotMethod::Publish(_) => PUBLISH,
            HotMethod::Ack(_) => ACK,
            HotMethod::Nack(_) => NACK,
            HotMethod::Reject(_) => REJECT,
        };
        (BASIC, method)
    }
}

/// A method frame's payload read by its fixed layout; `None` for any other method, and
/// for a payload the generic parser must judge (it answers with the same error it always
/// did).
pub fn parse_method(payload: &[u8]) -> Option<HotMethod> {
    let mut r = Reader(payload);
    if r.u16()? != BASIC {
        return None;
    }
    let method = match r.u16()? {
        PUBLISH => {
            let _ticket = r.u16()?;
            let exchange = r.short_string()?;
            let routing_key = r.short_string()?;
            let bits = r.u8()?;
            HotMethod::Publish(basic::Publish {
                exchange: exchange.into(),
                routing_key: routing_key.into(),
                mandatory: bits & 1 != 0,
                immediate: bits & 2 != 0,
            })
        }
        ACK => {
            let (delivery_tag, bits) = (r.u64()?, r.u8()?);
            HotMethod::Ack(basic::Ack {
                delivery_tag,
                multiple: bits & 1 != 0,
            })
        }
        NACK => {
            let (delivery_tag, bits) = (r.u64()?, r.u8()?);
            HotMethod::Nack(basic::Nack {
                delivery_tag,
                multiple: bits & 1 != 0,
                requeue: bits & 2 != 0,
            })
        }
        REJECT => {
            let (delivery_tag, bits) = (r.u64()?, r.u8()?);
            HotMethod::Reject(basic::Reject {
                delivery_tag,
                requeue: bits & 1 != 0,
            })
        }
        _ => return None,
    };
    // The generic parser refuses trailing bytes; so does this (by leaving them to it).
    r.0.is_empty().then_some(method)
}

/// Reads big-endian fields off the front of a payload.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }

    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_be_bytes(self.take(2)?.try_into().ok()?))
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_be_bytes(self.take(8)?.try_into().ok()?))
    }

    /// A short string, which must be UTF-8 (as the generic parser requires).
    fn short_string(&mut self) -> Option<&'a str> {
        let len = self.u8()?;
        std::str::from_utf8(self.take(usize::from(len))?).ok()
    }
}

/// Writes one frame: type, channel, the payload `fill` writes (its size patched in
/// afterwards), frame end. `fill` returning `None` (a field that does not fit) leaves
/// `out` as it was and returns `None`.
fn frame(
    out: &mut Vec<u8>,
    kind: u8,
    channel: u16,
    fill: impl FnOnce(&mut Vec<u8>) -> Option<()>,
) -> Option<()> {
    let start = out.len();
    out.push(kind);
    out.extend_from_slice(&channel.to_be_bytes());
    out.extend_from_slice(&[0; 4]);
    if fill(out).is_none() {
        out.truncate(start);
        return None;
    }
    let Ok(size) = u32::try_from(out.len() - start - 7) else {
        out.truncate(start);
        return None;
    };
    out[start + 3..start + 7].copy_from_slice(&size.to_be_bytes());
    out.push(FRAME_END);
    Some(())
}

/// A short string; `None` when it is longer than 255 bytes.
fn short(out: &mut Vec<u8>, s: &str) -> Option<()> {
    out.push(u8::try_from(s.len()).ok()?);
    out.extend_from_slice(s.as_bytes());
    Some(())
}

/// The confirm of publish `seq` (`basic.ack`, not `multiple`).
pub fn write_confirm(out: &mut Vec<u8>, channel: u16, seq: u64) {
    frame(out, FRAME_METHOD, channel, |out| {
        out.extend_from_slice(&BASIC.to_be_bytes());
        out.extend_from_slice(&ACK.to_be_bytes());
        out.extend_from_slice(&seq.to_be_bytes());
        out.push(0);
        Some(())
    })
    .expect("a confirm always fits");
}

/// `basic.deliver`; `None` (and nothing written) when a name is too long for a short
/// string.
pub fn write_deliver(
    out: &mut Vec<u8>,
    channel: u16,
    consumer_tag: &str,
    delivery_tag: u64,
    redelivered: bool,
    message: &Message,
) -> Option<()> {
    frame(out, FRAME_METHOD, channel, |out| {
        out.extend_from_slice(&BASIC.to_be_bytes());
        out.extend_from_slice(&DELIVER.to_be_bytes());
        short(out, consumer_tag)?;
        out.extend_from_slice(&delivery_tag.to_be_bytes());
        out.push(u8::from(redelivered));
        short(out, &message.exchange)?;
        short(out, &message.routing_key)
    })
}

/// A content header for a message without headers (a header table is the generic
/// codec's); `None` (and nothing written) for one with headers or a property too long
/// for a short string.
pub fn write_content_header(out: &mut Vec<u8>, channel: u16, message: &Message) -> Option<()> {
    if !message.headers.is_empty() {
        return None;
    }
    let p = &message.properties;
    let expiration = p.expiration_ms.map(|ms| ms.to_string());
    frame(out, FRAME_HEADER, channel, |out| {
        out.extend_from_slice(&BASIC.to_be_bytes());
        out.extend_from_slice(&0u16.to_be_bytes()); // weight
        out.extend_from_slice(&(message.body.len() as u64).to_be_bytes());
        let flags_at = out.len();
        out.extend_from_slice(&[0, 0]);
        let mut w = Properties {
            out: &mut *out,
            flags: 0,
        };
        w.text(flag::CONTENT_TYPE, p.content_type.as_deref())?;
        w.text(flag::CONTENT_ENCODING, p.content_encoding.as_deref())?;
        w.bytes(flag::DELIVERY_MODE, p.persistent.then_some(&[2u8][..]));
        let priority = p.priority.map(|n| [n]);
        w.bytes(flag::PRIORITY, priority.as_ref().map(|n| &n[..]));
        w.text(flag::CORRELATION_ID, p.correlation_id.as_deref())?;
        w.text(flag::REPLY_TO, p.reply_to.as_deref())?;
        w.text(flag::EXPIRATION, expiration.as_deref())?;
        w.text(flag::MESSAGE_ID, p.message_id.as_deref())?;
        // AMQP timestamps are seconds; ours milliseconds.
        let seconds = p.timestamp.map(|ms| (ms / 1000).to_be_bytes());
        w.bytes(flag::TIMESTAMP, seconds.as_ref().map(|s| &s[..]));
        w.text(flag::KIND, p.kind.as_deref())?;
        w.text(flag::USER_ID, p.user_id.as_deref())?;
        w.text(flag::APP_ID, p.app_id.as_deref())?;
        w.text(flag::CLUSTER_ID, p.cluster_id.as_deref())?;
        let flags = w.flags;
        out[flags_at..flags_at + 2].copy_from_slice(&flags.to_be_bytes());
        Some(())
    })
}

/// Writes the properties present, in order, and collects their flags.
struct Properties<'a> {
    out: &'a mut Vec<u8>,
    flags: u16,
}

impl Properties<'_> {
    fn text(&mut self, bit: u16, value: Option<&str>) -> Option<()> {
        if let Some(value) = value {
            self.flags |= bit;
            short(self.out, value)?;
        }
        Some(())
    }

    fn bytes(&mut self, bit: u16, value: Option<&[u8]>) {
        if let Some(value) = value {
            self.flags |= bit;
            self.out.extend_from_slice(value);
        }
    }
}

/// The body frames of a message, each at most `frame_max` bytes (0: no limit); none for
/// an empty body.
pub fn write_body(out: &mut Vec<u8>, channel: u16, body: &[u8], frame_max: u32) {
    let max = match frame_max {
        0 => u32::MAX - super::frames::FRAME_OVERHEAD,
        n => n.saturating_sub(super::frames::FRAME_OVERHEAD).max(1),
    };
    out.reserve(body.len() + body.len() / max as usize * 8 + 8);
    for piece in body.chunks(max as usize) {
        out.push(FRAME_BODY);
        out.extend_from_slice(&channel.to_be_bytes());
        out.extend_from_slice(&(piece.len() as u32).to_be_bytes());
        out.extend_from_slice(piece);
        out.push(FRAME_END);
    }
}

#[cfg(test)]
mod tests {
    use amq_protocol::frame::{AMQPContentHeader, AMQPFrame};
    use amq_protocol::protocol::{AMQPClass, parse_class};
    use bytes::Bytes;

    use super::*;
    use crate::amqp::frames::encode;
    use crate::amqp::mapping::properties_to_amqp;
    use crate::message::Properties;

    fn generic_payload(class: AMQPClass) -> Vec<u8> {
        let mut out = Vec::new();
        encode(&AMQPFrame::Method(1, class), &mut out);
        out[7..out.len() - 1].to_vec()
    }

    fn class(method: HotMethod) -> AMQPClass {
        AMQPClass::Basic(match method {
            HotMethod::Publish(m) => basic::AMQPMethod::Publish(m),
            HotMethod::Ack(m) => basic::AMQPMethod::Ack(m),
            HotMethod::Nack(m) => basic::AMQPMethod::Nack(m),
            HotMethod::Reject(m) => basic::AMQPMethod::Reject(m),
        })
    }

    fn generic_parses(payload: &[u8]) -> bool {
        matches!(parse_class(payload), Ok(([], _)))
    }

    #[test]
    fn methods_are_read_as_the_generic_parser_reads_them() {
        let publish = |exchange: &str, key: &str, mandatory, immediate| {
            AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
                exchange: exchange.into(),
                routing_key: key.into(),
                mandatory,
                immediate,
            }))
        };
        let cases = [
            publish("", "q", false, false),
            publish("amq.topic", "a.b.ü", true, false),
            publish("x", &"k".repeat(255), false, true),
            publish("", "", true, true),
            AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
                delivery_tag: u64::MAX,
                multiple: true,
            })),
            AMQPClass::Basic(basic::AMQPMethod::Nack(basic::Nack {
                delivery_tag: 7,
                multiple: false,
                requeue: true,
            })),
            AMQPClass::Basic(basic::AMQPMethod::Nack(basic::Nack {
                delivery_tag: 0,
                multiple: true,
                requeue: false,
            })),
            AMQPClass::Basic(basic::AMQPMethod::Reject(basic::Reject {
                delivery_tag: 3,
                requeue: true,
            })),
        ];
        for expected in cases {
            let payload = generic_payload(expected.clone());
            let hot = parse_method(&payload).expect("a hot method");
            assert_eq!(class(hot), expected);
            // Anything cut short or with bytes after: the generic parser's to judge (and
            // it refuses every one of them).
            for end in 0..payload.len() {
                assert!(
                    parse_method(&payload[..end]).is_none(),
                    "{expected:?} cut at {end}"
                );
                assert!(!generic_parses(&payload[..end]));
            }
            let longer = [&payload[..], &[0]].concat();
            assert!(parse_method(&longer).is_none());
            assert!(!generic_parses(&longer));
        }
        // Other methods are not read here.
        let qos = generic_payload(AMQPClass::Basic(basic::AMQPMethod::Qos(basic::Qos {
            prefetch_count: 1,
            global: false,
        })));
        assert!(parse_method(&qos).is_none());
        assert!(parse_method(&[0, 50, 0, 40, 0, 0, 0, 1, b'q', 0]).is_none());
        // A routing key that is not UTF-8 is the generic parser's error.
        let bad_utf8 = [0, 60, 0, 40, 0, 0, 0, 1, 0xFF, 0];
        assert!(parse_method(&bad_utf8).is_none());
        assert!(!generic_parses(&bad_utf8));
    }

    fn message(properties: Properties, headers: crate::message::Headers, body: &[u8]) -> Message {
        Message {
            exchange: "amq.direct".into(),
            routing_key: "key".into(),
            headers,
            properties,
            body: Bytes::copy_from_slice(body),
        }
    }

    fn every_property() -> Properties {
        Properties {
            persistent: true,
            message_id: Some("m".into()),
            correlation_id: Some("c".into()),
            reply_to: Some("r".into()),
            content_type: Some("text/plain".into()),
            priority: Some(9),
            expiration_ms: Some(60_000),
            timestamp: Some(1_700_000_000_123),
            delay_ms: None,
            content_encoding: Some("gzip".into()),
            kind: Some("t".into()),
            user_id: Some("guest".into()),
            app_id: Some("app".into()),
            cluster_id: Some("cl".into()),
        }
    }

    fn generic_header(channel: u16, m: &Message) -> Vec<u8> {
        let header = AMQPContentHeader {
            class_id: 60,
            body_size: m.body.len() as u64,
            properties: properties_to_amqp(m),
        };
        let mut out = Vec::new();
        encode(&AMQPFrame::Header(channel, header), &mut out);
        out
    }

    #[test]
    fn frames_are_written_as_the_generic_codec_writes_them() {
        for properties in [Properties::default(), every_property()] {
            let m = message(properties, Default::default(), b"body");
            let mut out = vec![9];
            write_content_header(&mut out, 3, &m).expect("no headers");
            assert_eq!(out[1..], generic_header(3, &m));
        }
        let m = message(every_property(), Default::default(), b"");
        let mut out = Vec::new();
        write_deliver(&mut out, 5, "ctag-1", 42, true, &m).unwrap();
        let deliver = basic::Deliver {
            consumer_tag: "ctag-1".into(),
            delivery_tag: 42,
            redelivered: true,
            exchange: "amq.direct".into(),
            routing_key: "key".into(),
        };
        let mut generic = Vec::new();
        encode(
            &AMQPFrame::Method(5, AMQPClass::Basic(basic::AMQPMethod::Deliver(deliver))),
            &mut generic,
        );
        assert_eq!(out, generic);
        let mut out = Vec::new();
        write_confirm(&mut out, 2, 77);
        let ack = basic::Ack {
            delivery_tag: 77,
            multiple: false,
        };
        let mut generic = Vec::new();
        encode(
            &AMQPFrame::Method(2, AMQPClass::Basic(basic::AMQPMethod::Ack(ack))),
            &mut generic,
        );
        assert_eq!(out, generic);
        let body: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        for (frame_max, len) in [
            (4096, 10_000),
            (4096, 4088),
            (4096, 4089),
            (0, 10_000),
            (4096, 0),
        ] {
            let mut out = Vec::new();
            write_body(&mut out, 1, &body[..len], frame_max);
            let mut generic = Vec::new();
            let max = match frame_max {
                0 => usize::MAX,
                n => n as usize - 8,
            };
            for piece in body[..len].chunks(max) {
                encode(&AMQPFrame::Body(1, piece.to_vec()), &mut generic);
            }
            assert_eq!(out, generic, "{len} bytes in frames of {frame_max}");
        }
    }

    #[test]
    fn what_does_not_fit_is_left_to_the_generic_codec() {
        let mut headers = crate::message::Headers::new();
        headers.insert("h".into(), serde_json::json!(1));
        let with_headers = message(every_property(), headers, b"x");
        let mut out = vec![1, 2];
        assert!(write_content_header(&mut out, 1, &with_headers).is_none());
        let long = Properties {
            app_id: Some("a".repeat(256)),
            ..every_property()
        };
        assert!(
            write_content_header(&mut out, 1, &message(long, Default::default(), b"")).is_none()
        );
        let mut long_key = message(Properties::default(), Default::default(), b"");
        long_key.routing_key = "k".repeat(256);
        assert!(write_deliver(&mut out, 1, "t", 1, false, &long_key).is_none());
        assert!(
            write_deliver(
                &mut out,
                1,
                &"t".repeat(256),
                1,
                false,
                &message(Properties::default(), Default::default(), b"")
            )
            .is_none()
        );
        assert_eq!(out, [1, 2], "nothing written");
    }
}
