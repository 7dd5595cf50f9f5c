//! Exchange features RabbitMQ applications use, with lapin against the real broker:
//! internal exchanges (refused to publishers over AMQP, JSON and STOMP) and auto-delete
//! exchanges (gone with their last binding, across a restart), alternate exchanges,
//! RabbitMQ's delayed message exchange (`x-delayed-message`, `x-delay`), `CC` and `BCC`
//! headers (sender-selected distribution).
//! Exchange-to-exchange bindings: tests/amqp_exchange_bindings.rs.

#[path = "support/amqp.rs"]
mod amqp;
#[path = "support/amqp_exchange_helpers.rs"]
mod helpers;
#[path = "support/hostile.rs"]
mod hostile;
#[path = "support/stomp.rs"]
mod stomp;

use amqp::{AmqpBroker, within};
use broker::protocol::ErrorCode;
use helpers::*;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Confirmation, ExchangeKind};

#[tokio::test(flavor = "multi_thread")]
async fn an_internal_exchange_refuses_publishes_from_every_protocol() {
    let broker = stomp_and_amqp_broker().await;
    let conn = broker.connect().await;
    let ch = conn.create_channel().await.unwrap();
    let internal = ExchangeDeclareOptions {
        durable: true,
        internal: true,
        ..Default::default()
    };
    declare_exchange(&ch, "feed", ExchangeKind::Topic, internal).await;
    declare_bound_queue(&ch, "feed-q", "feed", "#").await;
    let json = broker.json_client().await;
    let info = exchange_info(&json, "feed").await.expect("listed");
    assert!(
        info.internal && info.durable && !info.auto_delete,
        "{info:?}"
    );
    // An equivalent redeclare is fine; one without `internal` is 406, as RabbitMQ.
    declare_exchange(&ch, "feed", ExchangeKind::Topic, internal).await;
    let other = conn.create_channel().await.unwrap();
    let plain = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    let refused =
        within(other.exchange_declare("feed".into(), ExchangeKind::Topic, plain, no_args()))
            .await
            .unwrap_err();
    assert_eq!(amqp::reply_code(&refused), Some(406), "{refused:?}");

    // AMQP: the channel is closed with 403 and RabbitMQ's text.
    let mut events = Box::pin(conn.events_listener());
    let publisher = confirm_channel(&conn).await;
    let _ = publisher
        .basic_publish(
            "feed".into(),
            "a.b".into(),
            BasicPublishOptions::default(),
            b"from amqp",
            BasicProperties::default(),
        )
        .await;
    let (code, text) = next_error(&mut events).await;
    assert_eq!(code, 403);
    assert_eq!(
        text,
        "ACCESS_REFUSED - cannot publish to internal exchange 'feed' in vhost '/'"
    );

    // JSON: `access_refused`.
    json.confirm_select().await.unwrap();
    let refused = json
        .publish(message("feed", "a.b", "from json"), false)
        .await
        .unwrap_err();
    assert_eq!(
        refused.code(),
        Some(ErrorCode::AccessRefused),
        "{refused:?}"
    );

    // STOMP (stomp.py): an ERROR frame naming it.
    let port = broker.broker().stomp_addr().unwrap().port();
    let got = stomp::scenario("send_refused", "tcp", port, &["/exchange/feed/a.b"]).await;
    let error = got["error"].as_str().unwrap();
    assert!(
        error.contains("cannot publish to internal exchange 'feed'"),
        "{got}"
    );
    // Nothing got in.
    assert_eq!(json.queue_info("feed-q").await.unwrap().ready, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_auto_delete_exchange_goes_with_its_last_binding_and_stays_gone() {
    let mut broker = AmqpBroker::start().await;
    let conn = broker.connect().await;
    let ch = conn.create_channel().await.unwrap();
    let auto_delete = ExchangeDeclareOptions {
        durable: true,
        auto_delete: true,
        ..Default::default()
    };
    // Never bound: it stays (RabbitMQ deletes only after a binding went).
    declare_exchange(&ch, "lonely", ExchangeKind::Fanout, auto_delete).await;
    // Bound only to a queue that does not outlive the broker: gone after a restart, as
    // RabbitMQ deletes it when that queue goes at shutdown. Bound to a durable queue: kept.
    declare_exchange(&ch, "to-transient", ExchangeKind::Fanout, auto_delete).await;
    within(ch.queue_declare("transient-q".into(), Default::default(), no_args()))
        .await
        .unwrap();
    within(ch.queue_bind(
        "transient-q".into(),
        "to-transient".into(),
        "".into(),
        QueueBindOptions::default(),
        no_args(),
    ))
    .await
    .unwrap();
    declare_exchange(&ch, "to-durable", ExchangeKind::Fanout, auto_delete).await;
    declare_bound_queue(&ch, "durable-q", "to-durable", "").await;
    declare_exchange(&ch, "jobs", ExchangeKind::Fanout, auto_delete).await;
    declare_exchange(&ch, "events", ExchangeKind::Fanout, auto_delete).await;
    let json = broker.json_client().await;
    let info = exchange_info(&json, "jobs").await.expect("listed");
    assert!(info.auto_delete && !info.internal, "{info:?}");
    declare_bound_queue(&ch, "jobs-a", "jobs", "").await;
    declare_bound_queue(&ch, "jobs-b", "jobs", "").await;
    declare_bound_queue(&ch, "events-a", "events", "").await;

    // One of two bindings removed: still there, and routing.
    within(ch.queue_unbind("jobs-a".into(), "jobs".into(), "".into(), no_args()))
        .await
        .unwrap();
    assert!(exchange_exists(&conn, "jobs").await);
    let publisher = confirm_channel(&conn).await;
    publish_confirmed(&publisher, "jobs", "", b"j1", BasicProperties::default()).await;
    assert_eq!(drain(&ch, "jobs-b").await, vec![b"j1".to_vec()]);
    // The last one goes with its queue's deletion: so does the exchange.
    within(ch.queue_delete("jobs-b".into(), QueueDeleteOptions::default()))
        .await
        .unwrap();
    assert!(!exchange_exists(&conn, "jobs").await);
    // And with an unbind.
    within(ch.queue_unbind("events-a".into(), "events".into(), "".into(), no_args()))
        .await
        .unwrap();
    assert!(!exchange_exists(&conn, "events").await);
    assert!(exchange_exists(&conn, "lonely").await);
    drop(publisher);
    let _ = conn.close(200, "bye".into()).await;

    // Durable ones stay deleted after a restart; the unbound one is still there.
    broker.restart().await;
    let conn = broker.connect().await;
    assert!(!exchange_exists(&conn, "jobs").await);
    assert!(!exchange_exists(&conn, "events").await);
    assert!(exchange_exists(&conn, "lonely").await);
    assert!(!exchange_exists(&conn, "to-transient").await);
    assert!(exchange_exists(&conn, "to-durable").await);
    let json = broker.json_client().await;
    let info = exchange_info(&json, "lonely").await.expect("restored");
    assert!(info.auto_delete, "the flag is stored: {info:?}");
    let info = exchange_info(&json, "to-durable").await.expect("restored");
    assert_eq!(info.bindings, 1, "{info:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_auto_delete_source_goes_when_its_destination_exchange_is_deleted() {
    let broker = AmqpBroker::start().await;
    let conn = broker.connect().await;
    let ch = conn.create_channel().await.unwrap();
    let auto_delete = ExchangeDeclareOptions {
        auto_delete: true,
        ..Default::default()
    };
    declare_exchange(&ch, "relay", ExchangeKind::Fanout, auto_delete).await;
    declare_exchange(
        &ch,
        "sink",
        ExchangeKind::Fanout,
        ExchangeDeclareOptions::default(),
    )
    .await;
    bind_exchange(&ch, "sink", "relay", "").await;
    within(ch.exchange_delete("sink".into(), ExchangeDeleteOptions::default()))
        .await
        .unwrap();
    assert!(!exchange_exists(&conn, "relay").await);
}

#[tokio::test]
async fn connection_start_advertises_exchange_to_exchange_bindings() {
    use amq_protocol::frame::{AMQPFrame, parse_frame};
    use amq_protocol::protocol::{AMQPClass, connection};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let broker = AmqpBroker::start().await;
    let mut socket = tokio::net::TcpStream::connect(broker.amqp_addr())
        .await
        .unwrap();
    socket.write_all(b"AMQP\x00\x00\x09\x01").await.unwrap();
    let mut buffer = Vec::new();
    let start = within(async {
        loop {
            if let Ok((_, frame)) = parse_frame(buffer.as_slice()) {
                break frame;
            }
            let mut chunk = [0u8; 4096];
            let n = socket.read(&mut chunk).await.unwrap();
            assert!(n > 0, "the broker closed before connection.start");
            buffer.extend_from_slice(&chunk[..n]);
        }
    })
    .await;
    let AMQPFrame::Method(0, AMQPClass::Connection(connection::AMQPMethod::Start(start))) = start
    else {
        panic!("not connection.start: {start:?}");
    };
    let Some(AMQPValue::FieldTable(capabilities)) =
        start.server_properties.inner().get("capabilities")
    else {
        panic!("no capabilities: {:?}", start.server_properties);
    };
    assert_eq!(
        capabilities.inner().get("exchange_exchange_bindings"),
        Some(&AMQPValue::Boolean(true))
    );
}

/// A mandatory publish on a confirm channel: whether it came back (`basic.return`).
async fn returned(ch: &Channel, exchange: &str, key: &str, body: &[u8]) -> bool {
    let mandatory = BasicPublishOptions {
        mandatory: true,
        ..Default::default()
    };
    let confirm = within(async {
        ch.basic_publish(
            exchange.into(),
            key.into(),
            mandatory,
            body,
            BasicProperties::default(),
        )
        .await
        .unwrap()
        .await
        .unwrap()
    })
    .await;
    match confirm {
        Confirmation::Ack(returned) => returned.is_some(),
        other => panic!("{exchange}/{key}: {other:?}"),
    }
}

fn alternate(name: &str) -> FieldTable {
    let mut table = FieldTable::default();
    table.insert(
        "alternate-exchange".into(),
        AMQPValue::LongString(name.into()),
    );
    table
}

#[tokio::test]
async fn unroutable_messages_go_to_the_alternate_exchange() {
    let broker = AmqpBroker::start().await;
    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    declare_exchange(&ch, "unrouted", ExchangeKind::Fanout, Default::default()).await;
    declare_bound_queue(&ch, "lost", "unrouted", "").await;
    within(ch.exchange_declare(
        "orders".into(),
        ExchangeKind::Direct,
        ExchangeDeclareOptions::default(),
        alternate("unrouted"),
    ))
    .await
    .unwrap();
    declare_bound_queue(&ch, "eu", "orders", "eu").await;
    assert!(!returned(&ch, "orders", "eu", b"routed").await);
    // Routed nowhere by `orders`: the alternate takes it, so it does not come back.
    assert!(!returned(&ch, "orders", "us", b"caught").await);
    assert_eq!(drain(&ch, "eu").await, [b"routed".to_vec()]);
    let caught = within(ch.basic_get("lost".into(), BasicGetOptions { no_ack: true }))
        .await
        .unwrap()
        .expect("the alternate exchange's queue has it");
    assert_eq!(caught.delivery.data, b"caught");
    assert_eq!(
        caught.delivery.exchange.as_str(),
        "orders",
        "delivered as published"
    );
    // Alternates that route nowhere either, in a cycle, or that do not exist: returned.
    for (name, other) in [("ping", "pong"), ("pong", "ping"), ("dangling", "nowhere")] {
        within(ch.exchange_declare(
            name.into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions::default(),
            alternate(other),
        ))
        .await
        .unwrap();
    }
    assert!(returned(&ch, "ping", "k", b"cycle").await);
    assert!(returned(&ch, "dangling", "k", b"nowhere").await);
    // The core's name for it must be a name.
    let json = broker.json_client().await;
    let arguments = serde_json::json!({"alternate_exchange": 7});
    let arguments = arguments.as_object().unwrap().clone();
    match json
        .declare_exchange("bad", "direct", false, arguments)
        .await
    {
        Err(broker::ClientError::Server { code, .. }) => assert_eq!(code, ErrorCode::InvalidField),
        other => panic!("expected invalid_field, got {other:?}"),
    }
}

/// RabbitMQ's delayed message exchange: type `x-delayed-message` routes as its
/// `x-delayed-type`, and a message's `x-delay` header (milliseconds) holds it back.
#[tokio::test]
async fn a_delayed_message_exchange_holds_back_what_has_an_x_delay() {
    let broker = stomp_and_amqp_broker().await;
    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-delayed-type".into(),
        AMQPValue::LongString("direct".into()),
    );
    within(ch.exchange_declare(
        "later".into(),
        ExchangeKind::Custom("x-delayed-message".into()),
        ExchangeDeclareOptions::default(),
        arguments.clone(),
    ))
    .await
    .unwrap();
    declare_bound_queue(&ch, "scheduled", "later", "job").await;
    let publish = |body: &'static [u8], delay: Option<i64>| {
        let mut headers = FieldTable::default();
        if let Some(ms) = delay {
            headers.insert("x-delay".into(), AMQPValue::LongLongInt(ms));
        }
        let properties = BasicProperties::default().with_headers(headers);
        let ch = ch.clone();
        async move {
            let options = BasicPublishOptions::default();
            let confirm = within(async {
                let publish =
                    ch.basic_publish("later".into(), "job".into(), options, body, properties);
                publish.await.unwrap().await.unwrap()
            })
            .await;
            assert!(matches!(confirm, Confirmation::Ack(None)), "{confirm:?}");
        }
    };
    // A delay long past the test's end: it must still be waiting when the others are not.
    publish(b"in an hour", Some(3_600_000)).await;
    publish(b"now", None).await;
    publish(b"not positive", Some(-5)).await;
    let json = broker.json_client().await;
    let info = json.queue_info("scheduled").await.unwrap();
    assert_eq!((info.ready, info.delayed), (2, 1), "{info:?}");
    assert_eq!(
        drain(&ch, "scheduled").await,
        [b"now".to_vec(), b"not positive".to_vec()]
    );
    // STOMP (stomp.py): the header is text.
    let port = broker.broker().stomp_addr().unwrap().port();
    let args = ["/exchange/later/job", "in a day", "x-delay=86400000"];
    stomp::scenario("send_then_disconnect", "tcp", port, &args).await;
    let info = json.queue_info("scheduled").await.unwrap();
    assert_eq!((info.ready, info.delayed), (0, 2), "{info:?}");

    // Without `x-delayed-type`: 406, as the plugin answers.
    let other = conn.create_channel().await.unwrap();
    let refused = within(other.exchange_declare(
        "no-type".into(),
        ExchangeKind::Custom("x-delayed-message".into()),
        ExchangeDeclareOptions::default(),
        no_args(),
    ))
    .await
    .unwrap_err();
    assert_eq!(amqp::reply_code(&refused), Some(406), "{refused:?}");
    // A redeclare the same way is fine; the exchange is listed as what it routes like.
    within(ch.exchange_declare(
        "later".into(),
        ExchangeKind::Custom("x-delayed-message".into()),
        ExchangeDeclareOptions::default(),
        arguments,
    ))
    .await
    .unwrap();
    let info = exchange_info(&json, "later").await.expect("listed");
    assert_eq!(info.kind, "direct");
    assert_eq!(info.arguments["delayed"], true);
}

/// Headers with a `CC` list and a `BCC` list of routing keys (AMQP arrays of strings).
fn cc_bcc(cc: &str, bcc: &str) -> BasicProperties {
    let list = |key: &str| AMQPValue::FieldArray(vec![AMQPValue::LongString(key.into())].into());
    let mut headers = FieldTable::default();
    headers.insert("CC".into(), list(cc));
    headers.insert("BCC".into(), list(bcc));
    BasicProperties::default().with_headers(headers)
}

/// RabbitMQ's sender-selected distribution: a message is routed with its routing key and
/// with every key of its `CC` and `BCC` headers; `BCC` is taken off before delivery.
#[tokio::test]
async fn cc_and_bcc_headers_add_routing_keys_and_bcc_is_not_delivered() {
    let broker = AmqpBroker::start().await;
    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    declare_exchange(&ch, "notify", ExchangeKind::Direct, Default::default()).await;
    for key in ["email", "sms", "push", "fax"] {
        declare_bound_queue(&ch, key, "notify", key).await;
    }
    publish_confirmed(&ch, "notify", "email", b"hello", cc_bcc("sms", "push")).await;
    for queue in ["email", "sms", "push"] {
        let got = within(ch.basic_get(queue.into(), BasicGetOptions { no_ack: true }))
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{queue} got the message"));
        let headers = got
            .delivery
            .properties
            .headers()
            .clone()
            .unwrap_or_default();
        assert!(headers.inner().contains_key("CC"), "{queue}: CC stays");
        assert!(
            !headers.inner().contains_key("BCC"),
            "{queue}: BCC is taken off"
        );
    }
    assert!(drain(&ch, "fax").await.is_empty(), "no key named it");
    // The default exchange: the keys are queue names.
    publish_confirmed(&ch, "", "email", b"direct", cc_bcc("fax", "sms")).await;
    for queue in ["email", "fax", "sms"] {
        assert_eq!(drain(&ch, queue).await, [b"direct".to_vec()], "{queue}");
    }
    assert!(drain(&ch, "push").await.is_empty());
}
