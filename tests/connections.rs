//! Connections end cleanly, whatever their peer does: sockets that never speak give their
//! slot back, a peer that vanishes loses its unacked messages to others, one address
//! cannot take every slot, a client stalled mid-TLS-handshake is closed, and a panic in
//! a connection's own code is torn down like a close.

#[path = "support/certs.rs"]
#[allow(dead_code)] // the client certificates are not used here
mod certs;
mod common;

use std::time::Duration;

use broker::protocol::Subscribe;
use broker::{Broker, Client, Config, QueueOptions};
use common::{WAIT, body, next, wait_for};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;
use tokio_tungstenite::tungstenite::Message as WsMessage;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// An in-process broker on `dir` with the test's own connection settings.
async fn start_with(dir: &std::path::Path, tune: impl FnOnce(&mut Config)) -> Broker {
    let mut config = Config::new(dir);
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.max_frame_bytes = common::FRAME_LIMIT;
    tune(&mut config);
    Broker::start(config).await.unwrap()
}

async fn raw(url: &str) -> Ws {
    tokio_tungstenite::connect_async(common::upgrade_request(url))
        .await
        .unwrap()
        .0
}

async fn send(ws: &mut Ws, frame: Value) {
    ws.send(WsMessage::Text(frame.to_string().into()))
        .await
        .unwrap();
}

/// The next JSON frame (pings are answered by reading).
async fn recv(ws: &mut Ws) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let frame = tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("a frame in time")
            .expect("connection open")
            .expect("readable frame");
        if let WsMessage::Text(text) = frame {
            return serde_json::from_str(&text).unwrap();
        }
    }
}

fn subscribe(queue: &str, prefetch: u32) -> Subscribe {
    Subscribe {
        queue: queue.into(),
        prefetch,
        auto_ack: false,
        consumer_tag: None,
        filter: None,
        exclusive: false,
        priority: 0,
        consumer_timeout_ms: None,
    }
}

/// Waits until the broker has closed `ws` (a close frame or the end of the stream).
async fn wait_closed(ws: &mut Ws) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("the broker closes the connection in time")
        {
            None | Some(Err(_)) | Some(Ok(WsMessage::Close(_))) => return,
            Some(Ok(_)) => {}
        }
    }
}

#[tokio::test]
async fn silent_sockets_give_their_slots_back_after_the_handshake_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_with(dir.path(), |c| {
        c.max_connections = 200;
        c.handshake_timeout = Duration::from_millis(500);
    })
    .await;
    let addr = broker.local_addr();
    // Every slot taken by a socket that never sends its handshake.
    let mut silent = Vec::new();
    for _ in 0..200 {
        silent.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    // A real client still gets in: the silent ones are dropped at the timeout.
    let client = tokio::time::timeout(WAIT, Client::connect(&broker.url()))
        .await
        .expect("a client is admitted once the silent sockets time out")
        .unwrap();
    client.list_queues().await.unwrap();
    // And the broker did close a silent socket (end of stream, nothing sent).
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(WAIT, silent[0].read(&mut buf))
        .await
        .expect("the silent socket is closed in time");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
}

#[tokio::test]
async fn a_client_stalled_mid_tls_handshake_is_closed_at_the_handshake_timeout() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().unwrap();
    let ca = certs::TestCa::new(dir.path(), "stall");
    let server = ca.server();
    let broker = start_with(&dir.path().join("data"), |c| {
        c.handshake_timeout = Duration::from_millis(300);
        c.tls = Some(broker::server::TlsConfig {
            cert: server.cert,
            key: server.key,
            client_ca: None,
        });
    })
    .await;
    // The listener speaks TLS to a client that finishes its handshake.
    let options = broker::ConnectOptions {
        tls: Some(broker::ClientTls::from_files(Some(&ca.ca), None).unwrap()),
        ..Default::default()
    };
    let client = Client::connect_with(&broker.url(), options).await.unwrap();
    client.list_queues().await.unwrap();
    // A client that sends the start of a ClientHello (a handshake record announcing 512
    // bytes, then 4 of them) and no more: the server waits for the rest, until the
    // handshake timeout closes the socket.
    let mut stalled = tokio::net::TcpStream::connect(broker.local_addr())
        .await
        .unwrap();
    let partial_hello = [0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc];
    stalled.write_all(&partial_hello).await.unwrap();
    // Whatever the server sends (an alert, or nothing), then end of stream or a reset.
    let mut rest = Vec::new();
    tokio::time::timeout(WAIT, stalled.read_to_end(&mut rest))
        .await
        .expect("the stalled socket is closed in time")
        .ok();
    // The broker is still serving.
    client.list_queues().await.unwrap();
}

#[tokio::test]
async fn a_peer_that_stops_answering_loses_its_unacked_messages_to_others() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_with(dir.path(), |c| {
        c.heartbeat = Some(Duration::from_millis(200));
    })
    .await;
    let client = Client::connect(&broker.url()).await.unwrap();
    client
        .declare_queue("work", QueueOptions::durable())
        .await
        .unwrap();
    let mut vanishing = raw(&broker.url()).await;
    send(
        &mut vanishing,
        json!({"id": 1, "op": "subscribe", "queue": "work", "prefetch": 1}),
    )
    .await;
    assert_eq!(recv(&mut vanishing).await["type"], "ok");
    client.confirm_select().await.unwrap();
    client
        .publish(common::persistent("work", "job-1"), false)
        .await
        .unwrap();
    let delivered = recv(&mut vanishing).await;
    assert_eq!(delivered["type"], "deliver", "{delivered}");
    // From now on the peer reads nothing, so it answers no ping: as if it vanished.
    let mut other = client.subscribe(subscribe("work", 1)).await.unwrap();
    let d = next(&mut other).await;
    assert_eq!(body(&d), "job-1");
    assert!(d.redelivered);
    let connections = client.list_connections().await.unwrap();
    assert_eq!(connections.len(), 1, "{connections:?}");
    drop(vanishing);
}

#[tokio::test]
async fn a_peer_answering_pings_keeps_its_connection() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_with(dir.path(), |c| {
        c.heartbeat = Some(Duration::from_millis(100));
    })
    .await;
    let mut ws = raw(&broker.url()).await;
    send(&mut ws, json!({"id": 1, "op": "list_queues"})).await;
    assert_eq!(recv(&mut ws).await["type"], "ok");
    // Reading answers each ping with a pong; five pings span more than two intervals.
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut pings = 0;
    while pings < 5 {
        let frame = tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("pings in time")
            .expect("connection open")
            .expect("readable frame");
        if matches!(frame, WsMessage::Ping(_)) {
            pings += 1;
        }
    }
    send(&mut ws, json!({"id": 2, "op": "list_queues"})).await;
    let reply = recv(&mut ws).await;
    assert_eq!(
        (reply["type"].as_str(), reply["id"].as_i64()),
        (Some("ok"), Some(2))
    );
}

#[tokio::test]
async fn a_connection_that_sends_no_request_is_closed() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_with(dir.path(), |c| {
        c.first_request_timeout = Duration::from_millis(300);
    })
    .await;
    let mut idle = raw(&broker.url()).await;
    wait_closed(&mut idle).await;
    // One that speaks in time is served.
    let client = Client::connect(&broker.url()).await.unwrap();
    client.list_queues().await.unwrap();
}

#[tokio::test]
async fn one_address_cannot_take_more_than_its_share_of_connections() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_with(dir.path(), |c| c.max_connections_per_source = 2).await;
    let first = Client::connect(&broker.url()).await.unwrap();
    let _second = Client::connect(&broker.url()).await.unwrap();
    assert!(
        tokio_tungstenite::connect_async(common::upgrade_request(&broker.url()))
            .await
            .is_err(),
        "a third connection from 127.0.0.1 is refused"
    );
    drop(first);
    let url = broker.url();
    let third = wait_for(|| {
        let url = url.clone();
        async move { Client::connect(&url).await.ok() }
    })
    .await;
    third.list_queues().await.unwrap();
}

#[tokio::test]
async fn an_oversized_frame_cut_inside_a_character_is_refused_and_the_connection_works() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_with(dir.path(), |_| {}).await;
    let mut ws = raw(&broker.url()).await;
    // Over the limit, and the first 200 bytes end inside a two-byte character.
    let head = r#"{"id":5,"op":"publish","routing_key":"q","body":""#;
    let chars = common::FRAME_LIMIT / 2 + 10;
    let mut text = String::from(head);
    text.push_str(&"é".repeat(chars));
    text.push_str(r#""}"#);
    assert!(!text.is_char_boundary(200) && text.len() > common::FRAME_LIMIT);
    ws.send(WsMessage::Text(text.into())).await.unwrap();
    let reply = recv(&mut ws).await;
    assert_eq!(reply["type"], "error", "{reply}");
    assert_eq!(reply["code"], "frame_too_large");
    assert_eq!(reply["id"], 5);
    send(&mut ws, json!({"id": 6, "op": "list_queues"})).await;
    let reply = recv(&mut ws).await;
    assert_eq!(
        (reply["type"].as_str(), reply["id"].as_i64()),
        (Some("ok"), Some(6))
    );
}

#[tokio::test]
async fn a_panic_in_a_connection_is_torn_down_like_a_close() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_with(dir.path(), |c| c.inject_connection_panics = true).await;
    let client = Client::connect(&broker.url()).await.unwrap();
    client
        .declare_queue("jobs", QueueOptions::durable())
        .await
        .unwrap();
    let mut doomed = raw(&broker.url()).await;
    send(
        &mut doomed,
        json!({"id": 1, "op": "declare_queue", "queue": "mine", "exclusive": true}),
    )
    .await;
    assert_eq!(recv(&mut doomed).await["type"], "ok");
    send(
        &mut doomed,
        json!({"id": 2, "op": "subscribe", "queue": "jobs", "prefetch": 10}),
    )
    .await;
    assert_eq!(recv(&mut doomed).await["type"], "ok");
    client.confirm_select().await.unwrap();
    client
        .publish(common::persistent("jobs", "held"), false)
        .await
        .unwrap();
    assert_eq!(recv(&mut doomed).await["type"], "deliver");
    assert_eq!(client.list_connections().await.unwrap().len(), 2);

    doomed
        .send(WsMessage::Text(broker::server::INJECTED_PANIC_FRAME.into()))
        .await
        .unwrap();
    wait_closed(&mut doomed).await;
    // No trace of it: not listed, its exclusive queue gone, its delivery back.
    wait_for(|| async { (client.list_connections().await.unwrap().len() == 1).then_some(()) })
        .await;
    assert!(client.queue_info("mine").await.is_err());
    let mut sub = client.subscribe(subscribe("jobs", 1)).await.unwrap();
    let d = next(&mut sub).await;
    assert_eq!(body(&d), "held");
    assert!(d.redelivered);
}
