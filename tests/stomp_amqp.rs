//! Messages crossing between STOMP (stomp.py, run by tests/stomp_clients/scenarios.py)
//! and AMQP (lapin), both ways, through one broker: properties, the persistent flag,
//! correlation-id, reply-to and custom headers arrive intact, by queue and through an
//! exchange.

#[path = "support/amqp.rs"]
mod amqp;
#[path = "support/stomp.rs"]
mod stomp;

use amqp::{AmqpBroker, within};
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel};
use serde_json::Value;

async fn broker() -> AmqpBroker {
    AmqpBroker::start_with(|c| c.stomp = Some("127.0.0.1:0".parse().unwrap())).await
}

fn stomp_port(broker: &AmqpBroker) -> u16 {
    broker.broker().stomp_addr().unwrap().port()
}

async fn durable_queue(ch: &Channel, name: &str) {
    let options = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    within(ch.queue_declare(name.into(), options, FieldTable::default()))
        .await
        .unwrap();
}

async fn get(ch: &Channel, queue: &str) -> lapin::message::BasicGetMessage {
    within(ch.basic_get(queue.into(), BasicGetOptions { no_ack: true }))
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("a message in `{queue}`"))
}

fn text(value: Option<&ShortString>) -> Option<&str> {
    value.map(|s| s.as_str())
}

fn stomp_header<'a>(message: &'a Value, name: &str) -> Option<&'a str> {
    message["headers"][name].as_str()
}

#[tokio::test(flavor = "multi_thread")]
async fn stomp_sends_reach_amqp_consumers_with_properties_and_headers() {
    let broker = broker().await;
    let conn = broker.connect().await;
    let ch = conn.create_channel().await.unwrap();
    durable_queue(&ch, "from-stomp").await;
    stomp::scenario(
        "send_then_disconnect",
        "tcp",
        stomp_port(&broker),
        &[
            "/amq/queue/from-stomp",
            "persistent hello",
            "persistent=true",
            "correlation-id=c-42",
            "reply-to=/queue/replies",
            "content-type=application/json",
            "priority=4",
            "amqp-message-id=m-1",
            "expiration=60000",
            "type=order.created",
            "app-id=shop",
            "content-encoding=gzip",
            "x-tenant=acme",
        ],
    )
    .await;
    stomp::scenario(
        "send_then_disconnect",
        "tcp",
        stomp_port(&broker),
        &["/amq/queue/from-stomp", "transient hello"],
    )
    .await;

    let got = get(&ch, "from-stomp").await;
    let delivery = got.delivery;
    assert_eq!(delivery.data, b"persistent hello");
    assert_eq!(delivery.exchange.as_str(), "");
    assert_eq!(delivery.routing_key.as_str(), "from-stomp");
    let props = &delivery.properties;
    assert_eq!(*props.delivery_mode(), Some(2));
    assert_eq!(text(props.correlation_id().as_ref()), Some("c-42"));
    assert_eq!(text(props.reply_to().as_ref()), Some("/queue/replies"));
    assert_eq!(
        text(props.content_type().as_ref()),
        Some("application/json")
    );
    assert_eq!(*props.priority(), Some(4));
    assert_eq!(text(props.message_id().as_ref()), Some("m-1"));
    assert_eq!(text(props.expiration().as_ref()), Some("60000"));
    assert_eq!(text(props.kind().as_ref()), Some("order.created"));
    assert_eq!(text(props.app_id().as_ref()), Some("shop"));
    assert_eq!(text(props.content_encoding().as_ref()), Some("gzip"));
    let headers = props.headers().clone().expect("headers");
    assert_eq!(
        headers.inner().get("x-tenant"),
        Some(&AMQPValue::LongString("acme".into()))
    );
    // Without `persistent:true` the message is transient: no delivery mode.
    let got = get(&ch, "from-stomp").await;
    assert_eq!(got.delivery.data, b"transient hello");
    assert_eq!(*got.delivery.properties.delivery_mode(), None);
    assert_eq!(*got.delivery.properties.correlation_id(), None);

    // Through an exchange: /topic/ publishes to amq.topic, where an AMQP queue is bound.
    durable_queue(&ch, "orders-eu").await;
    within(ch.queue_bind(
        "orders-eu".into(),
        "amq.topic".into(),
        "orders.eu.*".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    stomp::scenario(
        "send_then_disconnect",
        "tcp",
        stomp_port(&broker),
        &["/topic/orders.eu.paid", "paid", "correlation-id=c-43"],
    )
    .await;
    let got = get(&ch, "orders-eu").await;
    assert_eq!(got.delivery.exchange.as_str(), "amq.topic");
    assert_eq!(got.delivery.routing_key.as_str(), "orders.eu.paid");
    assert_eq!(
        text(got.delivery.properties.correlation_id().as_ref()),
        Some("c-43")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn amqp_publishes_reach_stomp_subscribers_with_properties_and_headers() {
    let broker = broker().await;
    let conn = broker.connect().await;
    let ch = conn.create_channel().await.unwrap();
    durable_queue(&ch, "to-stomp").await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let mut headers = FieldTable::default();
    headers.insert("x-trace".into(), AMQPValue::LongString("t-9".into()));
    headers.insert("attempt".into(), AMQPValue::LongLongInt(3));
    headers.insert("urgent".into(), AMQPValue::Boolean(true));
    let properties = BasicProperties::default()
        .with_delivery_mode(2)
        .with_correlation_id("c-77".into())
        .with_reply_to("amqp-replies".into())
        .with_content_type("text/plain".into())
        .with_priority(7)
        .with_message_id("m-2".into())
        .with_timestamp(1_700_000_000)
        .with_type("order.created".into())
        .with_app_id("shop".into())
        .with_user_id("guest".into())
        .with_content_encoding("identity".into())
        .with_headers(headers);
    for (body, properties) in [
        (&b"from amqp"[..], properties),
        (&b"transient"[..], BasicProperties::default()),
    ] {
        let confirm = within(async {
            ch.basic_publish(
                "".into(),
                "to-stomp".into(),
                BasicPublishOptions::default(),
                body,
                properties,
            )
            .await
            .unwrap()
            .await
            .unwrap()
        })
        .await;
        assert!(confirm.is_ack());
    }

    let port = stomp_port(&broker);
    let got = stomp::scenario("receive_one", "tcp", port, &["/amq/queue/to-stomp"]).await;
    let message = &got["message"];
    assert_eq!(message["body"], "from amqp");
    assert_eq!(
        stomp_header(message, "destination"),
        Some("/queue/to-stomp")
    );
    assert_eq!(stomp_header(message, "persistent"), Some("true"));
    assert_eq!(stomp_header(message, "correlation-id"), Some("c-77"));
    assert_eq!(stomp_header(message, "reply-to"), Some("amqp-replies"));
    assert_eq!(stomp_header(message, "content-type"), Some("text/plain"));
    assert_eq!(stomp_header(message, "priority"), Some("7"));
    assert_eq!(stomp_header(message, "amqp-message-id"), Some("m-2"));
    assert_eq!(stomp_header(message, "timestamp"), Some("1700000000"));
    assert_eq!(stomp_header(message, "type"), Some("order.created"));
    assert_eq!(stomp_header(message, "app-id"), Some("shop"));
    assert_eq!(stomp_header(message, "user-id"), Some("guest"));
    assert_eq!(stomp_header(message, "content-encoding"), Some("identity"));
    // Custom headers: strings as they are, other values as JSON text.
    assert_eq!(stomp_header(message, "x-trace"), Some("t-9"));
    assert_eq!(stomp_header(message, "attempt"), Some("3"));
    assert_eq!(stomp_header(message, "urgent"), Some("true"));

    // The transient one: no `persistent` header, no correlation-id.
    let got = stomp::scenario("receive_one", "tcp", port, &["/amq/queue/to-stomp"]).await;
    let message = &got["message"];
    assert_eq!(message["body"], "transient");
    assert_eq!(stomp_header(message, "persistent"), None);
    assert_eq!(stomp_header(message, "correlation-id"), None);
}
