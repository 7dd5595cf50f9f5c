use super::*;
use crate::protocol::{encode_request, encode_server_frame, parse_request, parse_server_frame};

const LIMIT: usize = 1 << 20;

fn messages() -> Vec<Message> {
    let mut full = Message::text("a.\"b\"\n", "line\nbreak \\ é");
    full.exchange = "x".into();
    full.headers
        .insert("h".into(), serde_json::json!({"n": [1, "two"]}));
    full.properties = Properties {
        persistent: true,
        message_id: Some("m\"1".into()),
        correlation_id: Some("c".into()),
        reply_to: Some("r".into()),
        content_type: Some("text/plain".into()),
        priority: Some(4),
        expiration_ms: Some(10),
        timestamp: Some(1_795_466_186_762),
        delay_ms: Some(5),
        content_encoding: Some("gzip".into()),
        kind: Some("t".into()),
        user_id: Some("u".into()),
        app_id: Some("a".into()),
        cluster_id: Some("c".into()),
    };
    let mut headers_only = Message::text("k", "h");
    headers_only
        .headers
        .insert("tenant".into(), serde_json::json!("acme"));
    let mut stamped = Message::text("k", "t");
    stamped.properties.timestamp = Some(0);
    let mut binary = Message::text("k", "");
    binary.body = Bytes::from_static(&[0xff, 0, 1, 0x80]);
    vec![
        Message::text("k", "plain"),
        Message::default(),
        full,
        headers_only,
        stamped,
        binary,
    ]
}

fn ids() -> [RequestId; 3] {
    [
        RequestId::Num(0),
        RequestId::Num(u64::MAX),
        RequestId::Str("p-1 é".into()),
    ]
}

fn requests() -> Vec<Request> {
    let mut all = Vec::new();
    for id in ids() {
        for message in messages() {
            for mandatory in [false, true] {
                all.push(Request {
                    id: id.clone(),
                    op: Op::Publish(Publish {
                        message: Box::new(message.clone()),
                        mandatory,
                    }),
                });
            }
        }
        for (delivery_tag, multiple) in [(1, false), (u64::MAX, true)] {
            all.push(Request {
                id: id.clone(),
                op: Op::Ack {
                    delivery_tag,
                    multiple,
                },
            });
        }
    }
    all
}

fn server_frames() -> Vec<ServerFrame> {
    let mut all: Vec<ServerFrame> = ids()
        .into_iter()
        .map(|id| ServerFrame::Confirm { id })
        .collect();
    for message in messages() {
        for (redelivered, delivery_count) in [(false, 1), (true, u32::MAX)] {
            all.push(ServerFrame::Deliver(Delivery {
                consumer_tag: "ctag-1".into(),
                delivery_tag: u64::MAX,
                redelivered,
                delivery_count,
                queue: "q é".into(),
                message: Arc::new(message.clone()),
            }));
        }
    }
    all
}

fn one_request(bytes: &[u8]) -> Result<Request, ParseError> {
    let mut records = decode_requests(bytes, LIMIT);
    let first = records.next().expect("one record");
    assert!(records.next().is_none(), "exactly one record");
    first
}

/// Each request decodes to the value it was encoded from, and to what the JSON parser
/// makes of the same request's JSON frame.
#[test]
fn request_records_round_trip_like_json() {
    for request in requests() {
        let mut bytes = Vec::new();
        assert!(write_request_record(&mut bytes, &request));
        let decoded = one_request(&bytes).unwrap();
        assert_eq!(format!("{decoded:?}"), format!("{request:?}"));
        let from_json = parse_request(&encode_request(&request)).unwrap();
        assert_eq!(format!("{decoded:?}"), format!("{from_json:?}"));
    }
}

#[test]
fn server_records_round_trip_like_json() {
    for frame in server_frames() {
        let mut bytes = Vec::new();
        assert!(write_server_record(&mut bytes, &frame));
        let decoded: Vec<_> = decode_server_frames(&bytes).collect();
        assert_eq!(decoded.len(), 1);
        let decoded = decoded.into_iter().next().unwrap().unwrap();
        assert_eq!(format!("{decoded:?}"), format!("{frame:?}"));
        let from_json = parse_server_frame(&encode_server_frame(&frame)).unwrap();
        assert_eq!(format!("{decoded:?}"), format!("{from_json:?}"));
    }
}

#[test]
fn records_pack_back_to_back() {
    let mut bytes = Vec::new();
    for request in requests() {
        write_request_record(&mut bytes, &request);
    }
    let decoded: Vec<_> = decode_requests(&bytes, LIMIT)
        .map(|r| format!("{:?}", r.unwrap()))
        .collect();
    let expected: Vec<_> = requests().iter().map(|r| format!("{r:?}")).collect();
    assert_eq!(decoded, expected);

    let mut bytes = Vec::new();
    for frame in server_frames() {
        write_server_record(&mut bytes, &frame);
    }
    assert_eq!(
        decode_server_frames(&bytes).filter(Result::is_ok).count(),
        server_frames().len()
    );
}

#[test]
fn only_the_message_frames_have_records() {
    let mut bytes = Vec::new();
    let declare = Request {
        id: 1.into(),
        op: Op::ConfirmSelect,
    };
    assert!(!write_request_record(&mut bytes, &declare));
    let nack = Request {
        id: 1.into(),
        op: Op::Reject {
            delivery_tag: 1,
            requeue: false,
        },
    };
    assert!(!write_request_record(&mut bytes, &nack));
    assert!(!write_server_record(&mut bytes, &ServerFrame::ok(1.into())));
    let error = ServerFrame::error(Some(1.into()), ErrorCode::QueueFull, "full");
    assert!(!write_server_record(&mut bytes, &error));
    assert!(bytes.is_empty());
}

/// The fixed layout, byte for byte, as docs/protocol.md shows it.
#[test]
fn layout_matches_the_documentation() {
    let ack = Request {
        id: 7.into(),
        op: Op::Ack {
            delivery_tag: 5,
            multiple: true,
        },
    };
    let mut bytes = Vec::new();
    write_request_record(&mut bytes, &ack);
    assert_eq!(
        bytes,
        [
            2, 18, 0, 0, 0, // kind ack, payload length 18
            0, 7, 0, 0, 0, 0, 0, 0, 0, // id: number 7
            1, // flags: multiple
            5, 0, 0, 0, 0, 0, 0, 0, // delivery_tag
        ]
    );
    let mut persistent = Message::text("q", "hi");
    persistent.properties.persistent = true;
    let publish = Request {
        id: RequestId::Str("p".into()),
        op: Op::Publish(Publish {
            message: Box::new(persistent),
            mandatory: false,
        }),
    };
    let mut bytes = Vec::new();
    write_request_record(&mut bytes, &publish);
    assert_eq!(
        bytes,
        [
            1, 27, 0, 0, 0, // kind publish, payload length 27
            1, 1, 0, 0, 0, b'p', // id: string "p"
            0,    // flags
            1,    // message flags: persistent, no timestamp
            0, 0, 0, 0, // exchange ""
            1, 0, 0, 0, b'q', // routing_key "q"
            0, 0, 0, 0, // meta: empty
            2, 0, 0, 0, b'h', b'i', // body
        ]
    );
    let mut bytes = Vec::new();
    write_server_record(&mut bytes, &ServerFrame::Confirm { id: 3.into() });
    assert_eq!(bytes, [4, 9, 0, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0]);
}

fn record(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut bytes = vec![kind];
    bytes.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    bytes.extend_from_slice(payload);
    bytes
}

fn ack_payload(id: u64, flags: u8, tag: u64) -> Vec<u8> {
    let mut p = vec![ID_NUM];
    p.extend_from_slice(&id.to_le_bytes());
    p.push(flags);
    p.extend_from_slice(&tag.to_le_bytes());
    p
}

/// A publish payload (numeric id 9) with the given message flags and meta.
fn publish_payload(message_flags: u8, routing_key: &[u8], meta: &[u8]) -> Vec<u8> {
    let mut p = vec![ID_NUM];
    p.extend_from_slice(&9u64.to_le_bytes());
    p.push(0);
    p.push(message_flags);
    put_bytes(&mut p, b"");
    put_bytes(&mut p, routing_key);
    put_bytes(&mut p, meta);
    put_bytes(&mut p, b"body");
    p
}

fn error_of(bytes: &[u8]) -> (Option<RequestId>, ErrorCode) {
    let errors: Vec<_> = decode_requests(bytes, LIMIT)
        .filter_map(Result::err)
        .collect();
    assert_eq!(errors.len(), 1, "one error for {bytes:?}");
    (errors[0].id.clone(), errors[0].code)
}

#[test]
fn malformed_records_get_typed_errors() {
    let n9 = Some(RequestId::Num(9));
    let cases: Vec<(&str, Vec<u8>, Option<RequestId>, ErrorCode)> = vec![
        ("empty message", vec![], None, ErrorCode::MalformedBinary),
        (
            "kind only",
            vec![KIND_ACK],
            None,
            ErrorCode::MalformedBinary,
        ),
        (
            "half a length",
            vec![KIND_ACK, 1, 0],
            None,
            ErrorCode::MalformedBinary,
        ),
        (
            "length past the end",
            record(KIND_ACK, &ack_payload(9, 0, 1))[..10].to_vec(),
            None,
            ErrorCode::MalformedBinary,
        ),
        (
            "unknown kind",
            record(0x7f, &ack_payload(9, 0, 1)),
            None,
            ErrorCode::MalformedBinary,
        ),
        (
            "broker-to-client kind",
            record(KIND_CONFIRM, &ack_payload(9, 0, 1)[..9]),
            None,
            ErrorCode::MalformedBinary,
        ),
        (
            "field past the payload",
            record(KIND_ACK, &ack_payload(9, 0, 1)[..12]),
            n9.clone(),
            ErrorCode::MalformedBinary,
        ),
        (
            "truncated id",
            record(KIND_ACK, &ack_payload(9, 0, 1)[..4]),
            None,
            ErrorCode::MalformedBinary,
        ),
        (
            "bytes after the last field",
            record(KIND_ACK, &[ack_payload(9, 0, 1), vec![0]].concat()),
            n9.clone(),
            ErrorCode::MalformedBinary,
        ),
        (
            "string length past the payload",
            record(KIND_PUBLISH, &publish_payload(0, b"q", b"")[..20]),
            n9.clone(),
            ErrorCode::MalformedBinary,
        ),
        (
            "bad id tag",
            record(KIND_ACK, &[&[2u8][..], &ack_payload(9, 0, 1)[1..]].concat()),
            None,
            ErrorCode::InvalidField,
        ),
        (
            "string id not UTF-8",
            record(
                KIND_ACK,
                &[ID_STR, 1, 0, 0, 0, 0xff, 0, 1, 0, 0, 0, 0, 0, 0, 0],
            ),
            None,
            ErrorCode::InvalidField,
        ),
        (
            "reserved ack flag",
            record(KIND_ACK, &ack_payload(9, 0x80, 1)),
            n9.clone(),
            ErrorCode::InvalidField,
        ),
        (
            "reserved message flag",
            record(KIND_PUBLISH, &publish_payload(0x04, b"q", b"")),
            n9.clone(),
            ErrorCode::InvalidField,
        ),
        (
            "routing key not UTF-8",
            record(KIND_PUBLISH, &publish_payload(0, &[0xc3], b"")),
            n9.clone(),
            ErrorCode::InvalidField,
        ),
        (
            "meta not JSON",
            record(KIND_PUBLISH, &publish_payload(0, b"q", b"{")),
            n9.clone(),
            ErrorCode::InvalidField,
        ),
        (
            "meta not an object",
            record(KIND_PUBLISH, &publish_payload(0, b"q", b"[1]")),
            n9.clone(),
            ErrorCode::InvalidField,
        ),
        (
            "unknown meta key",
            record(KIND_PUBLISH, &publish_payload(0, b"q", br#"{"body":"x"}"#)),
            n9.clone(),
            ErrorCode::InvalidField,
        ),
        (
            "unknown property",
            record(
                KIND_PUBLISH,
                &publish_payload(0, b"q", br#"{"properties":{"colour":1}}"#),
            ),
            n9.clone(),
            ErrorCode::InvalidField,
        ),
        (
            "persistent in meta",
            record(
                KIND_PUBLISH,
                &publish_payload(0, b"q", br#"{"properties":{"persistent":true}}"#),
            ),
            n9.clone(),
            ErrorCode::InvalidField,
        ),
        (
            "timestamp in meta",
            record(
                KIND_PUBLISH,
                &publish_payload(0, b"q", br#"{"properties":{"timestamp":1}}"#),
            ),
            n9.clone(),
            ErrorCode::InvalidField,
        ),
    ];
    for (name, bytes, id, code) in cases {
        assert_eq!(error_of(&bytes), (id, code), "{name}");
    }
    // Meta that is fine: headers and another property.
    let fine = record(
        KIND_PUBLISH,
        &publish_payload(
            1,
            b"q",
            br#"{"headers":{"a":1},"properties":{"priority":2}}"#,
        ),
    );
    let Op::Publish(publish) = one_request(&fine).unwrap().op else {
        panic!("a publish");
    };
    assert!(publish.message.properties.persistent);
    assert_eq!(publish.message.properties.priority, Some(2));
    assert_eq!(publish.message.headers["a"], 1);
}

#[test]
fn records_over_the_limit_are_too_large() {
    let bytes = record(KIND_ACK, &ack_payload(9, 0, 1));
    let errors: Vec<_> = decode_requests(&bytes, bytes.len() - 1).collect();
    let err = errors[0].as_ref().unwrap_err();
    assert_eq!(
        (err.id.clone(), err.code),
        (Some(RequestId::Num(9)), ErrorCode::FrameTooLarge)
    );
    assert!(decode_requests(&bytes, bytes.len()).all(|r| r.is_ok()));
}

/// Records before a bad one are decoded; nothing after it is.
#[test]
fn decoding_stops_at_the_first_bad_record() {
    let good = record(KIND_ACK, &ack_payload(1, 0, 1));
    let bad = record(0x7f, b"");
    let bytes = [good.clone(), good.clone(), bad, good].concat();
    let results: Vec<_> = decode_requests(&bytes, LIMIT).collect();
    assert_eq!(results.len(), 3);
    assert!(results[0].is_ok() && results[1].is_ok());
    assert_eq!(
        results[2].as_ref().unwrap_err().code,
        ErrorCode::MalformedBinary
    );

    let mut frames = Vec::new();
    write_server_record(&mut frames, &ServerFrame::Confirm { id: 1.into() });
    frames.extend_from_slice(&record(KIND_PUBLISH, b""));
    write_server_record(&mut frames, &ServerFrame::Confirm { id: 2.into() });
    let results: Vec<_> = decode_server_frames(&frames).collect();
    assert_eq!(results.len(), 2);
    assert!(results[0].is_ok());
    assert!(results[1].as_ref().unwrap_err().contains("kind 1"));
    assert!(decode_server_frames(&[KIND_CONFIRM, 9]).all(|r| r.is_err()));
}

/// Every truncation and every single-byte corruption of valid records decodes to
/// values or errors, never a panic.
#[test]
fn corrupt_input_never_panics() {
    let mut publishes = Vec::new();
    for request in requests().iter().step_by(3) {
        write_request_record(&mut publishes, request);
    }
    let mut frames = Vec::new();
    for frame in server_frames().iter().step_by(2) {
        write_server_record(&mut frames, frame);
    }
    for bytes in [&publishes, &frames] {
        for cut in 0..bytes.len() {
            decode_requests(&bytes[..cut], LIMIT).for_each(drop);
            decode_server_frames(&bytes[..cut]).for_each(drop);
        }
        for at in 0..bytes.len().min(4096) {
            for value in [0x00, 0x01, 0x7f, 0xff] {
                let mut corrupt = bytes.clone();
                corrupt[at] = value;
                decode_requests(&corrupt, LIMIT).for_each(drop);
                decode_server_frames(&corrupt).for_each(drop);
            }
        }
    }
}
