//! STOMP at the wire, where no client library goes: malformed frames get an ERROR and
//! the end, heart-beats both ways, the vhost from `host`, `list_connections`, and STOMP
//! frames packed into and split across WebSocket messages.

#[path = "support/stomp.rs"]
mod stomp;

use broker::QueueOptions;
use futures_util::SinkExt;
use stomp::{RawStomp, StompBroker, WAIT, header};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

#[tokio::test]
async fn malformed_frames_get_an_error_frame_then_the_end() {
    let b = StompBroker::start().await;
    let port = b.stomp_port();
    let big_header = format!(
        "SEND\nx:{}\n\n\0",
        "a".repeat(broker::stomp::MAX_HEADER_BYTES)
    );
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"FLY\n\n\0".to_vec(), "unknown command `FLY`"),
        (
            b"SEND\ndestination:/queue/a\ncontent-length:2\n\nabc\0".to_vec(),
            "not followed by a NUL",
        ),
        (b"SEND\ndestination:/queue/a\\t\n\nx\0".to_vec(), "escape"),
        (big_header.into_bytes(), "exceed"),
        (
            b"SEND\ndestination:/nowhere/a\n\nx\0".to_vec(),
            "unknown destination",
        ),
        (b"SEND\n\nx\0".to_vec(), "destination"),
        (
            b"SUBSCRIBE\ndestination:/queue/a\nid:1\nack:sometimes\n\n\0".to_vec(),
            "ack mode",
        ),
        (b"ACK\nid:nonsense\n\n\0".to_vec(), "ack id"),
        (b"COMMIT\ntransaction:none\n\n\0".to_vec(), "no transaction"),
        (
            b"SUBSCRIBE\ndestination:/amq/queue/missing\nid:1\n\n\0".to_vec(),
            "missing",
        ),
    ];
    for (bytes, want) in cases {
        let (mut raw, _) = RawStomp::connect(port, "").await;
        raw.send(&bytes).await;
        let error = raw.frame().await.expect("an ERROR frame");
        assert!(error.starts_with("ERROR\n"), "{error}");
        assert!(error.contains(want), "want `{want}` in {error}");
        raw.closed().await;
    }
    // Before CONNECT: anything else is refused.
    let mut raw = RawStomp::open(port).await;
    raw.send(b"SEND\ndestination:/queue/a\n\nx\0").await;
    let error = raw.frame().await.expect("an ERROR frame");
    assert!(error.contains("CONNECT"), "{error}");
    raw.closed().await;
    // A version the broker does not speak.
    let mut raw = RawStomp::open(port).await;
    raw.send(b"CONNECT\naccept-version:2.0\nlogin:guest\npasscode:guest\n\n\0")
        .await;
    let error = raw.frame().await.expect("an ERROR frame");
    assert_eq!(header(&error, "version"), Some("1.0,1.1,1.2"));
    raw.closed().await;
    // The broker still serves: nothing above took it down or leaked a connection.
    let connections = b.client().await.list_connections().await.unwrap();
    assert!(
        connections
            .iter()
            .all(|c| c.protocol == broker::protocol::WireProtocol::Json),
        "{connections:?}"
    );
}

#[tokio::test]
async fn heart_beats_are_sent_and_enforced() {
    let b = StompBroker::start().await;
    let (mut raw, connected) = RawStomp::connect(b.stomp_port(), "heart-beat:100,100\n").await;
    // The broker sends every 100 ms and expects the same.
    assert_eq!(header(&connected, "heart-beat"), Some("100,100"));
    assert_eq!(raw.read_byte().await, Some(b'\n'));
    // A client that stays silent is closed after two intervals.
    raw.closed().await;
}

#[tokio::test]
async fn host_names_the_vhost_and_list_connections_shows_stomp() {
    let b = StompBroker::start().await;
    let admin = b.client().await;
    admin.add_vhost("stomp-v").await.unwrap();
    admin
        .set_permissions(broker::protocol::SetPermissions {
            user: "guest".into(),
            vhost: "stomp-v".into(),
            configure: ".*".into(),
            write: ".*".into(),
            read: ".*".into(),
            plugin: false,
        })
        .await
        .unwrap();
    let mut raw = RawStomp::open(b.stomp_port()).await;
    raw.send(b"STOMP\naccept-version:1.1,1.2\nhost:stomp-v\nlogin:guest\npasscode:guest\n\n\0")
        .await;
    let connected = raw.frame().await.unwrap();
    assert_eq!(header(&connected, "version"), Some("1.2"));
    raw.send(b"SEND\ndestination:/queue/in-v\nreceipt:s\n\nx\0")
        .await;
    let receipt = raw.frame().await.unwrap();
    assert_eq!(header(&receipt, "receipt-id"), Some("s"));
    let url = broker::client::credentials::with_vhost(&b.broker.url(), "stomp-v");
    let in_vhost = broker::Client::connect(&url).await.unwrap();
    assert_eq!(in_vhost.queue_info("in-v").await.unwrap().ready, 1);
    assert!(
        admin.queue_info("in-v").await.is_err(),
        "not in the default vhost"
    );
    let connections = in_vhost.list_connections().await.unwrap();
    let stomp = connections
        .iter()
        .find(|c| c.protocol == broker::protocol::WireProtocol::Stomp)
        .expect("the STOMP connection is listed");
    assert_eq!(
        (stomp.user.as_str(), stomp.vhost.as_str()),
        ("guest", "stomp-v")
    );
}

#[tokio::test]
async fn websocket_messages_may_pack_several_frames_or_split_one() {
    let b = StompBroker::start().await;
    let client = b.client().await;
    client
        .declare_queue("ws-packed", QueueOptions::durable())
        .await
        .unwrap();
    let mut request = format!("ws://127.0.0.1:{}/ws", b.ws_port())
        .into_client_request()
        .unwrap();
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        "v10.stomp, v12.stomp".parse().unwrap(),
    );
    let (mut ws, response) = tokio_tungstenite::connect_async(request).await.unwrap();
    assert_eq!(response.headers()["Sec-WebSocket-Protocol"], "v12.stomp");
    let packed = "CONNECT\naccept-version:1.2\nhost:/\nlogin:guest\npasscode:guest\n\n\0\
                  SEND\ndestination:/amq/queue/ws-packed\n\none\0\
                  SEND\ndestination:/amq/queue/ws-packed\n\ntwo\0";
    ws.send(WsMessage::text(packed)).await.unwrap();
    let split = b"SEND\ndestination:/amq/queue/ws-packed\ncontent-length:5\n\nth\0ee\0DISCONNECT\nreceipt:bye\n\n\0";
    ws.send(WsMessage::binary(split[..30].to_vec()))
        .await
        .unwrap();
    ws.send(WsMessage::binary(split[30..].to_vec()))
        .await
        .unwrap();
    let mut texts = String::new();
    let read = async {
        use futures_util::StreamExt;
        while let Some(Ok(message)) = ws.next().await {
            texts.push_str(&String::from_utf8_lossy(&message.into_data()));
        }
    };
    tokio::time::timeout(WAIT, read)
        .await
        .expect("closed after DISCONNECT");
    assert!(texts.starts_with("CONNECTED\n"), "{texts}");
    assert!(texts.contains("RECEIPT\nreceipt-id:bye\n"), "{texts}");
    let peeked = client.peek_queue("ws-packed", 10).await.unwrap();
    let bodies: Vec<&[u8]> = peeked.iter().map(|m| &m.message.body[..]).collect();
    assert_eq!(bodies, [&b"one"[..], b"two", b"th\0ee"]);
}

#[tokio::test]
async fn acks_in_transactions_wait_for_commit_and_1_1_acks_by_message_id() {
    let b = StompBroker::start().await;
    let mut raw = RawStomp::open(b.stomp_port()).await;
    raw.send(b"CONNECT\naccept-version:1.1\nhost:/\nlogin:guest\npasscode:guest\n\n\0")
        .await;
    let connected = raw.frame().await.unwrap();
    assert_eq!(header(&connected, "version"), Some("1.1"));
    raw.send(b"SUBSCRIBE\ndestination:/queue/tx-ack\nid:s\nack:client-individual\n\n\0")
        .await;
    raw.send(b"SEND\ndestination:/queue/tx-ack\n\nm\0").await;
    let message = raw.frame().await.unwrap();
    assert!(message.starts_with("MESSAGE\n"), "{message}");
    // 1.1 has no `ack` header: ACK names the message by `message-id`.
    assert_eq!(header(&message, "ack"), None);
    let id = header(&message, "message-id").unwrap().to_string();
    let client = b.client().await;
    let ack = |tx: &str| format!("ACK\nsubscription:s\nmessage-id:{id}\ntransaction:{tx}\n\n\0");
    raw.send(b"BEGIN\ntransaction:t1\n\n\0").await;
    raw.send(ack("t1").as_bytes()).await;
    raw.send(b"ABORT\ntransaction:t1\nreceipt:aborted\n\n\0")
        .await;
    assert_eq!(
        header(&raw.frame().await.unwrap(), "receipt-id"),
        Some("aborted")
    );
    let info = client.queue_info("tx-ack").await.unwrap();
    assert_eq!(
        (info.unacked, info.acked),
        (1, 0),
        "the aborted ACK did nothing"
    );
    raw.send(b"BEGIN\ntransaction:t2\n\n\0").await;
    raw.send(ack("t2").as_bytes()).await;
    raw.send(b"COMMIT\ntransaction:t2\nreceipt:committed\n\n\0")
        .await;
    assert_eq!(
        header(&raw.frame().await.unwrap(), "receipt-id"),
        Some("committed")
    );
    let info = client.queue_info("tx-ack").await.unwrap();
    assert_eq!((info.unacked, info.acked), (0, 1));
}
