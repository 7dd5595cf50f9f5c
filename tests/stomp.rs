//! STOMP through stomp.py, a client written by others, over TCP and WebSocket: every
//! frame, the three ack modes, each destination kind, transactions, receipts, logins
//! and permissions, and messages crossing between STOMP and the JSON protocol.

#[path = "support/stomp.rs"]
mod stomp;

use broker::QueueOptions;
use broker::protocol::SetPermissions;
use serde_json::Value;
use stomp::{StompBroker, scenario};

fn header<'a>(message: &'a Value, name: &str) -> &'a str {
    message["headers"][name]
        .as_str()
        .unwrap_or_else(|| panic!("no header `{name}` in {message}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_password_gets_an_error_frame() {
    let b = StompBroker::start().await;
    for transport in ["tcp", "ws"] {
        let got = scenario("bad_password", transport, b.port(transport), &[]).await;
        let error = got["error"].as_str().unwrap();
        assert!(error.contains("invalid username or password"), "{got}");
    }
}

async fn roundtrip(transport: &str) {
    let b = StompBroker::start().await;
    let queue = format!("stomp-roundtrip-{transport}");
    let got = scenario("roundtrip", transport, b.port(transport), &[&queue]).await;
    assert_eq!(
        got["receipts"],
        serde_json::json!(["r-send", "r-sub", "r-ack", "r-unsub"])
    );
    let message = &got["message"];
    assert_eq!(message["body"], "hello stomp");
    assert_eq!(header(message, "destination"), format!("/queue/{queue}"));
    assert_eq!(header(message, "subscription"), "s1");
    assert_eq!(header(message, "persistent"), "true");
    assert_eq!(header(message, "priority"), "3");
    assert_eq!(header(message, "correlation-id"), "c-1");
    assert_eq!(header(message, "content-type"), "text/plain");
    assert_eq!(header(message, "x-trace"), "t-1");
    assert_eq!(header(message, "redelivered"), "false");
    assert_eq!(header(message, "ack"), header(message, "message-id"));
    // `/queue/` declared the queue durable; the ACK settled the message.
    let info = b.client().await.queue_info(&queue).await.unwrap();
    assert!(info.durable);
    assert_eq!((info.ready, info.unacked, info.acked), (0, 0, 1));
}

#[tokio::test(flavor = "multi_thread")]
async fn send_subscribe_ack_unsubscribe_disconnect_with_receipts_over_tcp() {
    roundtrip("tcp").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_same_over_websocket_in_binary_messages() {
    roundtrip("ws").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ack_modes_settle_what_they_say() {
    let b = StompBroker::start().await;
    let client = b.client().await;
    client.confirm_select().await.unwrap();
    // (mode, acked index, bodies left in the queue once the subscriber is gone)
    let cases = [
        ("auto", "0", vec![]),
        ("client", "1", vec!["3"]),
        ("client-individual", "1", vec!["1", "3"]),
    ];
    for (mode, index, left) in cases {
        let queue = format!("stomp-ack-{mode}");
        client
            .declare_queue(&queue, QueueOptions::durable())
            .await
            .unwrap();
        for body in ["1", "2", "3"] {
            let message = broker::Message::text(queue.clone(), body);
            client.publish(message, false).await.unwrap();
        }
        let got = scenario("ack_mode", "tcp", b.stomp_port(), &[&queue, mode, index]).await;
        assert_eq!(got["bodies"], serde_json::json!(["1", "2", "3"]), "{mode}");
        let peeked = client.peek_queue(&queue, 10).await.unwrap();
        let bodies: Vec<String> = peeked
            .iter()
            .map(|m| String::from_utf8_lossy(&m.message.body).into_owned())
            .collect();
        assert_eq!(bodies, left, "{mode}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn nack_without_requeue_dead_letters_with_x_death() {
    let b = StompBroker::start().await;
    let got = scenario("nack_dead_letter", "tcp", b.stomp_port(), &["stomp-work"]).await;
    let dead = &got["dead"];
    assert_eq!(dead["body"], "poison");
    let death: Value = serde_json::from_str(header(dead, "x-death")).unwrap();
    assert!(death.to_string().contains("stomp-work"), "{death}");
    assert!(death.to_string().contains("rejected"), "{death}");
}

#[tokio::test(flavor = "multi_thread")]
async fn topics_exchanges_and_durable_subscriptions() {
    let b = StompBroker::start().await;
    let client = b.client().await;
    client
        .declare_exchange("stomp-fanout", "fanout", false, Default::default())
        .await
        .unwrap();
    let got = scenario("topics", "tcp", b.stomp_port(), &[]).await;
    for who in ["a", "b"] {
        assert_eq!(got[who]["body"], "eu story", "{who}");
        assert_eq!(header(&got[who], "destination"), "/topic/news.eu");
    }
    assert_eq!(got["durable"]["body"], "while away");
    assert_eq!(got["fanned"]["body"], "fanned");
    assert_eq!(
        header(&got["fanned"], "destination"),
        "/exchange/stomp-fanout/any.key"
    );
    // The topic exchange is a durable `topic` exchange named amq.topic.
    let exchanges = client.list_exchanges().await.unwrap();
    let topic = exchanges
        .exchanges
        .iter()
        .find(|e| e.exchange == broker::stomp::TOPIC_EXCHANGE)
        .expect("amq.topic declared");
    assert_eq!((topic.kind.as_str(), topic.durable), ("topic", true));
}

#[tokio::test(flavor = "multi_thread")]
async fn temp_queue_replies_come_back_to_the_requester() {
    let b = StompBroker::start().await;
    for transport in ["tcp", "ws"] {
        let got = scenario("temp_queue", transport, b.port(transport), &[]).await;
        let reply_to = header(&got["request"], "reply-to");
        assert!(
            reply_to.starts_with("/reply-queue/stomp-reply-"),
            "{reply_to}"
        );
        assert_eq!(got["reply"]["body"], "pong");
        assert_eq!(header(&got["reply"], "subscription"), "/temp-queue/answers");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn transactions_apply_their_sends_at_commit_and_drop_them_at_abort() {
    let b = StompBroker::start().await;
    let got = scenario("transactions", "tcp", b.stomp_port(), &["stomp-tx"]).await;
    assert_eq!(got["first"], "outside");
    assert_eq!(got["committed"], serde_json::json!(["in-tx-1", "in-tx-2"]));
    assert_eq!(got["after"], "after-abort");
}

#[tokio::test(flavor = "multi_thread")]
async fn stomp_publishes_reach_json_consumers_and_back_with_headers() {
    let b = StompBroker::start().await;
    let client = b.client().await;
    client.confirm_select().await.unwrap();
    // STOMP → JSON.
    scenario(
        "send_then_disconnect",
        "tcp",
        b.stomp_port(),
        &[
            "/queue/stomp-to-json",
            "from stomp",
            "persistent=true",
            "correlation-id=c-9",
            "reply-to=/queue/answers",
            "expiration=60000",
            "amqp-message-id=m-9",
            "x-tenant=acme",
        ],
    )
    .await;
    let mut sub = client.consume("stomp-to-json", 10).await.unwrap();
    let delivery = tokio::time::timeout(stomp::WAIT, sub.next())
        .await
        .unwrap()
        .unwrap();
    let message = &delivery.message;
    assert_eq!(&message.body[..], b"from stomp");
    assert!(message.properties.persistent);
    assert_eq!(message.properties.correlation_id.as_deref(), Some("c-9"));
    assert_eq!(
        message.properties.reply_to.as_deref(),
        Some("/queue/answers")
    );
    assert_eq!(message.properties.expiration_ms, Some(60000));
    assert_eq!(message.properties.message_id.as_deref(), Some("m-9"));
    assert_eq!(message.headers["x-tenant"], "acme");
    assert!(!message.headers.contains_key("destination"));
    client.ack(delivery.delivery_tag, false).unwrap();
    // JSON → STOMP.
    client
        .declare_queue("json-to-stomp", QueueOptions::durable())
        .await
        .unwrap();
    let mut message = broker::Message::text("json-to-stomp", "from json");
    message.properties.persistent = true;
    message.properties.priority = Some(4);
    message.properties.content_type = Some("text/plain".into());
    message.properties.message_id = Some("j-1".into());
    message.headers.insert("x-tenant".into(), "acme".into());
    message.headers.insert("x-count".into(), 3.into());
    client.publish(message, false).await.unwrap();
    let got = scenario(
        "receive_one",
        "tcp",
        b.stomp_port(),
        &["/amq/queue/json-to-stomp"],
    )
    .await;
    let message = &got["message"];
    assert_eq!(message["body"], "from json");
    assert_eq!(header(message, "persistent"), "true");
    assert_eq!(header(message, "priority"), "4");
    assert_eq!(header(message, "content-type"), "text/plain");
    assert_eq!(header(message, "amqp-message-id"), "j-1");
    assert_eq!(header(message, "x-tenant"), "acme");
    assert_eq!(header(message, "x-count"), "3");
    assert_eq!(header(message, "destination"), "/queue/json-to-stomp");
}

#[tokio::test(flavor = "multi_thread")]
async fn permissions_refuse_what_a_user_may_not_do() {
    let b = StompBroker::start().await;
    let admin = b.client().await;
    admin.add_user("reader", "pw", &[]).await.unwrap();
    admin
        .set_permissions(SetPermissions {
            user: "reader".into(),
            vhost: "/".into(),
            configure: String::new(),
            write: String::new(),
            read: ".*".into(),
            plugin: false,
        })
        .await
        .unwrap();
    admin
        .declare_queue("stomp-readonly", QueueOptions::durable())
        .await
        .unwrap();
    admin.add_user("stranger", "pw", &[]).await.unwrap();
    let port = b.stomp_port();
    // Read-only: SEND refused (with the frame's receipt), SUBSCRIBE allowed.
    let got = scenario("refused", "tcp", port, &["reader", "pw", "/", "send"]).await;
    assert!(got["error"].as_str().unwrap().contains("refused"), "{got}");
    assert_eq!(got["receipt"], "sent");
    // No permissions in the vhost: refused at CONNECT.
    let got = scenario("refused", "tcp", port, &["stranger", "pw", "/", "connect"]).await;
    assert!(got["error"].as_str().unwrap().contains("vhost"), "{got}");
    // A vhost that does not exist: refused at CONNECT.
    let got = scenario(
        "refused",
        "ws",
        b.ws_port(),
        &["guest", "guest", "nowhere", "connect"],
    )
    .await;
    assert!(got["error"].as_str().unwrap().contains("nowhere"), "{got}");
    let info = admin.queue_info("stomp-readonly").await.unwrap();
    assert_eq!(info.ready, 0);
}

/// RabbitMQ's queue headers on SEND and SUBSCRIBE (`x-max-length`, `x-message-ttl`,
/// `durable`, ...) declare the destination's queue with them; a malformed one is an ERROR
/// and declares nothing.
#[tokio::test(flavor = "multi_thread")]
async fn queue_headers_declare_the_queue_with_them() {
    let b = StompBroker::start().await;
    let port = b.stomp_port();
    for body in ["m1", "m2", "m3"] {
        let args = ["/queue/capped", body, "x-max-length=2"];
        scenario("send_then_disconnect", "tcp", port, &args).await;
    }
    let client = b.client().await;
    let capped = client.queue_info("capped").await.unwrap();
    assert_eq!(capped.arguments["max_length"], 2);
    let kept: Vec<String> = client
        .peek_queue("capped", 10)
        .await
        .unwrap()
        .iter()
        .map(|m| String::from_utf8_lossy(&m.message.body).into_owned())
        .collect();
    assert_eq!(kept, ["m2", "m3"], "the oldest went at the length limit");

    let args = [
        "/queue/subscribed",
        "durable=false",
        "x-message-ttl=60000",
        "x-dead-letter-exchange=dlx",
        "x-single-active-consumer=true",
    ];
    scenario("subscribe_then_disconnect", "tcp", port, &args).await;
    let subscribed = client.queue_info("subscribed").await.unwrap();
    assert!(!subscribed.durable);
    assert_eq!(subscribed.arguments["message_ttl"], 60000);
    assert_eq!(subscribed.arguments["dead_letter_exchange"], "dlx");
    assert_eq!(subscribed.arguments["single_active_consumer"], true);

    let args = ["/queue/malformed", "x-max-length=ten"];
    let got = scenario("send_refused", "tcp", port, &args).await;
    let error = got["error"].as_str().unwrap();
    assert!(error.contains("invalid arg 'x-max-length'"), "{got}");
    assert!(client.queue_info("malformed").await.is_err());
}
