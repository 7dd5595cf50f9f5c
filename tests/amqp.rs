//! AMQP 0-9-1 with lapin, a real RabbitMQ client, against the in-process broker: the
//! handshake (logins, protocol header, vhost), heartbeats, and the core methods.

#[path = "support/amqp.rs"]
mod amqp;

use amqp::{AmqpBroker, WAIT, next_delivery, raw_open, reply_code, within};
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn lapin_connects_publishes_and_consumes() {
    let broker = AmqpBroker::start().await;
    let conn = broker.connect().await;
    let channel = conn.create_channel().await.unwrap();
    let queue = channel
        .queue_declare(
            "work".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    assert_eq!(queue.name().as_str(), "work");
    channel
        .basic_publish(
            "".into(),
            "work".into(),
            BasicPublishOptions::default(),
            b"hello",
            BasicProperties::default(),
        )
        .await
        .unwrap();
    let mut consumer = channel
        .basic_consume(
            "work".into(),
            "c1".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let delivery = next_delivery(&mut consumer).await;
    assert_eq!(delivery.data, b"hello");
    assert_eq!(delivery.routing_key.as_str(), "work");
    assert_eq!(delivery.delivery_tag, 1);
    delivery.ack(BasicAckOptions::default()).await.unwrap();
    // The ack reached the router: a passive declare counts nothing left.
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let after = channel
        .queue_declare("work".into(), passive, FieldTable::default())
        .await
        .unwrap();
    assert_eq!(after.message_count(), 0);
    assert_eq!(after.consumer_count(), 1);
    within(conn.close(200, "bye".into())).await.unwrap();
}

#[tokio::test]
async fn a_wrong_password_is_refused_with_403() {
    let broker = AmqpBroker::start().await;
    let refused = within(Connection::connect(
        &broker.uri("guest", "wrong"),
        ConnectionProperties::default(),
    ))
    .await
    .expect_err("refused");
    assert_eq!(reply_code(&refused), Some(403), "{refused:?}");
    // AMQPLAIN goes through the same authenticator.
    let amqplain = format!("{}?auth_mechanism=amqplain", broker.uri("guest", "guest"));
    let conn = within(Connection::connect(
        &amqplain,
        ConnectionProperties::default(),
    ))
    .await
    .expect("AMQPLAIN login");
    assert!(conn.status().connected());
    let amqplain_wrong = format!("{}?auth_mechanism=amqplain", broker.uri("nobody", "x"));
    let refused = within(Connection::connect(
        &amqplain_wrong,
        ConnectionProperties::default(),
    ))
    .await
    .expect_err("refused");
    assert_eq!(reply_code(&refused), Some(403), "{refused:?}");
}

#[tokio::test]
async fn a_vhost_other_than_slash_is_not_allowed() {
    let broker = AmqpBroker::start().await;
    let uri = format!("amqp://guest:guest@{}/elsewhere", broker.amqp_addr());
    let refused = within(Connection::connect(&uri, ConnectionProperties::default()))
        .await
        .expect_err("refused");
    assert_eq!(reply_code(&refused), Some(530), "{refused:?}");
}

#[tokio::test]
async fn a_wrong_protocol_header_is_answered_with_ours_then_closed() {
    let broker = AmqpBroker::start().await;
    for header in [&b"AMQP\x00\x00\x08\x00"[..], b"GET / HTTP/1.1\r\n\r\n"] {
        let mut socket = tokio::net::TcpStream::connect(broker.amqp_addr())
            .await
            .unwrap();
        socket.write_all(header).await.unwrap();
        let mut answer = Vec::new();
        within(socket.read_to_end(&mut answer)).await.unwrap();
        assert_eq!(answer, b"AMQP\x00\x00\x09\x01");
    }
}

/// After `connection.close-ok` the client closes the socket, as with RabbitMQ: lapin takes
/// a broker that ends the stream first for a broken connection (it logs an error and its
/// status says errored, not closed).
#[tokio::test]
async fn a_client_closing_its_connection_sees_it_closed_cleanly() {
    let broker = AmqpBroker::start().await;
    // The broker closing first lost the race to lapin's close-ok most times, not always.
    for _ in 0..5 {
        let conn = broker.connect().await;
        let _open = conn.create_channel().await.unwrap();
        within(conn.close(200, "bye".into())).await.unwrap();
        let status = conn.status();
        assert!(status.closed() && !status.errored(), "{status:?}");
    }
}

#[tokio::test]
async fn heartbeats_are_sent_and_a_silent_peer_is_dropped() {
    let broker =
        AmqpBroker::start_with(|c| c.heartbeat = Some(std::time::Duration::from_secs(1))).await;
    // lapin sends its own heartbeats: the connection lives past two intervals.
    let conn = broker.connect().await;
    let channel = conn.create_channel().await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    channel
        .queue_declare(
            "alive".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("still connected after two heartbeat intervals");
    // A raw peer that completes the handshake and then says nothing is closed.
    let mut raw = raw_open(&broker).await;
    let mut rest = Vec::new();
    let read = tokio::time::timeout(WAIT, raw.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "the broker closes a silent peer");
    // Among what it sent before closing: at least one heartbeat frame.
    assert!(
        rest.windows(8).any(|w| w == [8, 0, 0, 0, 0, 0, 0, 0xCE]),
        "{rest:?}"
    );
}

/// AMQP frames over a WebSocket that chose the `amqp` subprotocol.
struct AmqpOverWebSocket {
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    buffer: Vec<u8>,
}

impl AmqpOverWebSocket {
    async fn connect(url: &str) -> Self {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut request = url.into_client_request().unwrap();
        request
            .headers_mut()
            .insert("Sec-WebSocket-Protocol", "amqp".parse().unwrap());
        let (ws, response) = tokio_tungstenite::connect_async(request).await.unwrap();
        assert_eq!(response.headers()["Sec-WebSocket-Protocol"], "amqp");
        AmqpOverWebSocket {
            ws,
            buffer: Vec::new(),
        }
    }

    async fn send(&mut self, bytes: Vec<u8>) {
        use futures_util::SinkExt;
        let message = tokio_tungstenite::tungstenite::Message::Binary(bytes.into());
        self.ws.send(message).await.unwrap();
    }

    async fn send_method(&mut self, channel: u16, class: amq_protocol::protocol::AMQPClass) {
        let bytes = amqp::frame_bytes(&amq_protocol::frame::AMQPFrame::Method(channel, class));
        self.send(bytes).await;
    }

    /// The next frame, whichever WebSocket messages it came in.
    async fn next_frame(&mut self) -> amq_protocol::frame::AMQPFrame {
        use futures_util::StreamExt;
        within(async {
            loop {
                if let Ok((rest, frame)) = amq_protocol::frame::parse_frame(self.buffer.as_slice())
                {
                    let used = self.buffer.len() - rest.len();
                    self.buffer.drain(..used);
                    return frame;
                }
                match self.ws.next().await {
                    Some(Ok(tokio_tungstenite::tungstenite::Message::Binary(bytes))) => {
                        self.buffer.extend_from_slice(&bytes)
                    }
                    Some(Ok(_)) => {}
                    other => panic!("WebSocket ended: {other:?}"),
                }
            }
        })
        .await
    }
}

#[tokio::test]
async fn amqp_runs_over_a_websocket_with_the_amqp_subprotocol() {
    use amq_protocol::frame::AMQPFrame;
    use amq_protocol::protocol::{AMQPClass, channel, connection, queue};
    let broker = AmqpBroker::start_with(|c| c.amqp = None).await;
    let url = broker.broker().url();
    let mut ws = AmqpOverWebSocket::connect(&url).await;
    ws.send(b"AMQP\x00\x00\x09\x01".to_vec()).await;
    assert!(matches!(
        ws.next_frame().await,
        AMQPFrame::Method(0, AMQPClass::Connection(connection::AMQPMethod::Start(_)))
    ));
    let start_ok = connection::StartOk {
        client_properties: Default::default(),
        mechanism: "PLAIN".into(),
        response: "\0guest\0guest".into(),
        locale: "en_US".into(),
    };
    ws.send_method(
        0,
        AMQPClass::Connection(connection::AMQPMethod::StartOk(start_ok)),
    )
    .await;
    assert!(matches!(
        ws.next_frame().await,
        AMQPFrame::Method(0, AMQPClass::Connection(connection::AMQPMethod::Tune(_)))
    ));
    let tune_ok = connection::TuneOk {
        channel_max: 8,
        frame_max: 131072,
        heartbeat: 0,
    };
    ws.send_method(
        0,
        AMQPClass::Connection(connection::AMQPMethod::TuneOk(tune_ok)),
    )
    .await;
    let open = connection::Open {
        virtual_host: "/".into(),
    };
    ws.send_method(0, AMQPClass::Connection(connection::AMQPMethod::Open(open)))
        .await;
    assert!(matches!(
        ws.next_frame().await,
        AMQPFrame::Method(0, AMQPClass::Connection(connection::AMQPMethod::OpenOk(_)))
    ));
    ws.send_method(
        1,
        AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
    )
    .await;
    assert!(matches!(ws.next_frame().await, AMQPFrame::Method(1, _)));
    let declare = queue::Declare {
        queue: "over-ws".into(),
        ..Default::default()
    };
    ws.send_method(1, AMQPClass::Queue(queue::AMQPMethod::Declare(declare)))
        .await;
    let AMQPFrame::Method(1, AMQPClass::Queue(queue::AMQPMethod::DeclareOk(ok))) =
        ws.next_frame().await
    else {
        panic!("expected queue.declare-ok");
    };
    assert_eq!(ok.queue.as_str(), "over-ws");
    // The same queue, seen by a JSON client of the same listener.
    let json = broker.json_client().await;
    assert_eq!(json.queue_info("over-ws").await.unwrap().queue, "over-ws");
    // A wrong password over WebSocket is refused like over TCP.
    let mut refused = AmqpOverWebSocket::connect(&url).await;
    refused.send(b"AMQP\x00\x00\x09\x01".to_vec()).await;
    refused.next_frame().await;
    let wrong = connection::StartOk {
        client_properties: Default::default(),
        mechanism: "PLAIN".into(),
        response: "\0guest\0nope".into(),
        locale: "en_US".into(),
    };
    refused
        .send_method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::StartOk(wrong)),
        )
        .await;
    let AMQPFrame::Method(0, AMQPClass::Connection(connection::AMQPMethod::Close(close))) =
        refused.next_frame().await
    else {
        panic!("expected connection.close");
    };
    assert_eq!(close.reply_code, 403);
}
