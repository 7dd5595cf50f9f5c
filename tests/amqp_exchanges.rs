//! Exchange features RabbitMQ applications use, with lapin against the real broker:
//! internal exchanges (refused to publishers over AMQP, JSON and STOMP), auto-delete
//! exchanges (gone with their last binding, across a restart), and exchange-to-exchange
//! bindings (`exchange.bind` / `unbind`, the JSON `bind_exchange`: routed again by the
//! destination with the same key and headers, once per queue through cycles and
//! diamonds, stored, removed with either exchange).

#[path = "support/amqp.rs"]
mod amqp;
#[path = "support/hostile.rs"]
mod hostile;
#[path = "support/stomp.rs"]
mod stomp;

use amqp::{AmqpBroker, within};
use broker::protocol::{ErrorCode, ExchangeBinding, ExchangeInfo};
use broker::{Headers, Message};
use futures_util::StreamExt as _;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ExchangeKind};

fn message(exchange: &str, key: &str, body: &str) -> Message {
    Message {
        exchange: exchange.into(),
        ..Message::text(key, body)
    }
}

fn no_args() -> FieldTable {
    FieldTable::default()
}

fn durable_queue() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..Default::default()
    }
}

async fn stomp_and_amqp_broker() -> AmqpBroker {
    AmqpBroker::start_with(|c| c.stomp = Some("127.0.0.1:0".parse().unwrap())).await
}

/// The code and text of the next channel or connection exception on `events`.
async fn next_error(
    events: &mut (impl futures_util::Stream<Item = lapin::Event> + Unpin),
) -> (u16, String) {
    within(async {
        loop {
            if let lapin::Event::Error(e) = events.next().await.expect("connection events")
                && let lapin::ErrorKind::ProtocolError(amqp) = e.kind()
            {
                break (amqp.get_id(), amqp.get_message().to_string());
            }
        }
    })
    .await
}

async fn declare_exchange(
    ch: &Channel,
    name: &str,
    kind: ExchangeKind,
    options: ExchangeDeclareOptions,
) {
    within(ch.exchange_declare(name.into(), kind, options, no_args()))
        .await
        .unwrap_or_else(|e| panic!("declare {name}: {e:?}"));
}

async fn declare_bound_queue(ch: &Channel, queue: &str, exchange: &str, key: &str) {
    within(ch.queue_declare(queue.into(), durable_queue(), no_args()))
        .await
        .unwrap();
    within(ch.queue_bind(
        queue.into(),
        exchange.into(),
        key.into(),
        QueueBindOptions::default(),
        no_args(),
    ))
    .await
    .unwrap();
}

async fn bind_exchange(ch: &Channel, destination: &str, source: &str, key: &str) {
    within(ch.exchange_bind(
        destination.into(),
        source.into(),
        key.into(),
        ExchangeBindOptions::default(),
        no_args(),
    ))
    .await
    .unwrap_or_else(|e| panic!("bind {source} → {destination}: {e:?}"));
}

/// Publishes on a confirm-mode channel and waits for the broker's ack.
async fn publish_confirmed(
    ch: &Channel,
    exchange: &str,
    key: &str,
    body: &[u8],
    properties: BasicProperties,
) {
    let confirm = within(async {
        ch.basic_publish(
            exchange.into(),
            key.into(),
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
    assert!(confirm.is_ack(), "{exchange}/{key}: {confirm:?}");
}

async fn confirm_channel(conn: &Connection) -> Channel {
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    ch
}

/// Every message waiting in `queue`, taken with `basic.get` (bodies, in order).
async fn drain(ch: &Channel, queue: &str) -> Vec<Vec<u8>> {
    let mut bodies = Vec::new();
    while let Some(got) = within(ch.basic_get(queue.into(), BasicGetOptions { no_ack: true }))
        .await
        .unwrap()
    {
        bodies.push(got.delivery.data);
    }
    bodies
}

async fn exchange_info(json: &broker::Client, name: &str) -> Option<ExchangeInfo> {
    let list = json.list_exchanges().await.unwrap();
    list.exchanges.into_iter().find(|e| e.exchange == name)
}

/// Whether exchange `name` exists, by a passive declare on a fresh channel (404 if not).
async fn exchange_exists(conn: &Connection, name: &str) -> bool {
    let ch = conn.create_channel().await.unwrap();
    let passive = ExchangeDeclareOptions {
        passive: true,
        ..Default::default()
    };
    match within(ch.exchange_declare(name.into(), ExchangeKind::Direct, passive, no_args())).await {
        Ok(()) => true,
        Err(e) => {
            assert_eq!(amqp::reply_code(&e), Some(404), "{e:?}");
            false
        }
    }
}

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
    let json = broker.json_client().await;
    let info = exchange_info(&json, "lonely").await.expect("restored");
    assert!(info.auto_delete, "the flag is stored: {info:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn exchange_to_exchange_bindings_route_again_with_the_same_key_and_headers() {
    let mut broker = AmqpBroker::start().await;
    let conn = broker.connect().await;
    let ch = conn.create_channel().await.unwrap();
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    let internal = ExchangeDeclareOptions {
        durable: true,
        internal: true,
        ..Default::default()
    };
    // ingress (topic) → paid (direct, internal) → paid-q, and ingress → by-region
    // (headers, internal) → eu-q.
    declare_exchange(&ch, "ingress", ExchangeKind::Topic, durable).await;
    declare_exchange(&ch, "paid", ExchangeKind::Direct, internal).await;
    declare_exchange(&ch, "by-region", ExchangeKind::Headers, internal).await;
    declare_bound_queue(&ch, "paid-q", "paid", "order.paid").await;
    within(ch.queue_declare("eu-q".into(), durable_queue(), no_args()))
        .await
        .unwrap();
    let mut eu = FieldTable::default();
    eu.insert("x-match".into(), AMQPValue::LongString("all".into()));
    eu.insert("region".into(), AMQPValue::LongString("eu".into()));
    within(ch.queue_bind(
        "eu-q".into(),
        "by-region".into(),
        "".into(),
        QueueBindOptions::default(),
        eu,
    ))
    .await
    .unwrap();
    bind_exchange(&ch, "paid", "ingress", "order.#").await;
    bind_exchange(&ch, "by-region", "ingress", "#").await;
    // A second identical bind changes nothing.
    bind_exchange(&ch, "paid", "ingress", "order.#").await;

    let publisher = confirm_channel(&conn).await;
    let mut headers = FieldTable::default();
    headers.insert("region".into(), AMQPValue::LongString("eu".into()));
    let eu_props = BasicProperties::default()
        .with_headers(headers)
        .with_correlation_id("c-7".into())
        .with_delivery_mode(2);
    publish_confirmed(
        &publisher,
        "ingress",
        "order.paid",
        b"paid-eu",
        eu_props.clone(),
    )
    .await;
    publish_confirmed(&publisher, "ingress", "order.new", b"new-eu", eu_props).await;
    publish_confirmed(
        &publisher,
        "ingress",
        "order.paid",
        b"paid-us",
        BasicProperties::default(),
    )
    .await;
    assert_eq!(
        drain(&ch, "paid-q").await,
        vec![b"paid-eu".to_vec(), b"paid-us".to_vec()]
    );
    let got = within(ch.basic_get("eu-q".into(), BasicGetOptions { no_ack: true }))
        .await
        .unwrap()
        .expect("routed by the headers exchange");
    // The delivery names the exchange published to, and the message is intact.
    assert_eq!(got.delivery.exchange.as_str(), "ingress");
    assert_eq!(got.delivery.routing_key.as_str(), "order.paid");
    assert_eq!(got.delivery.data, b"paid-eu");
    assert_eq!(
        got.delivery
            .properties
            .correlation_id()
            .as_ref()
            .map(|s| s.as_str()),
        Some("c-7")
    );
    assert_eq!(drain(&ch, "eu-q").await, vec![b"new-eu".to_vec()]);

    // Listed, with the JSON view of the same bindings.
    let json = broker.json_client().await;
    let listed = json.list_exchange_bindings().await.unwrap();
    let mut bindings: Vec<(String, String, String)> = listed
        .iter()
        .map(|b| (b.source.clone(), b.destination.clone(), b.key.clone()))
        .collect();
    bindings.sort();
    assert_eq!(
        bindings,
        vec![
            ("ingress".into(), "by-region".into(), "#".into()),
            ("ingress".into(), "paid".into(), "order.#".into()),
        ]
    );
    drop(publisher);
    let _ = conn.close(200, "bye".into()).await;

    // Stored: after a restart they still route.
    broker.restart().await;
    let conn = broker.connect().await;
    let ch = conn.create_channel().await.unwrap();
    let publisher = confirm_channel(&conn).await;
    publish_confirmed(
        &publisher,
        "ingress",
        "order.paid",
        b"after",
        BasicProperties::default(),
    )
    .await;
    assert_eq!(drain(&ch, "paid-q").await, vec![b"after".to_vec()]);

    // exchange.unbind removes one; deleting the destination removes the other.
    within(ch.exchange_unbind(
        "paid".into(),
        "ingress".into(),
        "order.#".into(),
        ExchangeUnbindOptions::default(),
        no_args(),
    ))
    .await
    .unwrap();
    within(ch.exchange_delete("by-region".into(), ExchangeDeleteOptions::default()))
        .await
        .unwrap();
    let json = broker.json_client().await;
    let listed = json.list_exchange_bindings().await.unwrap();
    assert!(listed.is_empty(), "{listed:?}");
    let mut props = FieldTable::default();
    props.insert("region".into(), AMQPValue::LongString("eu".into()));
    publish_confirmed(
        &publisher,
        "ingress",
        "order.paid",
        b"unrouted",
        BasicProperties::default().with_headers(props),
    )
    .await;
    assert!(drain(&ch, "paid-q").await.is_empty());
    drop(publisher);
    let _ = conn.close(200, "bye".into()).await;
    broker.restart().await;
    let json = broker.json_client().await;
    let listed = json.list_exchange_bindings().await.unwrap();
    assert!(listed.is_empty(), "stay removed: {listed:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_message_reaches_each_queue_once_through_cycles_and_diamonds() {
    let broker = AmqpBroker::start().await;
    let conn = broker.connect().await;
    let ch = conn.create_channel().await.unwrap();
    let options = ExchangeDeclareOptions::default();
    // top → left, top → right, left → bottom, right → bottom, bottom → top (a cycle);
    // bottom is a json-router (its plugin reads the body: routed on an exchange worker).
    for name in ["top", "left", "right"] {
        declare_exchange(&ch, name, ExchangeKind::Fanout, options).await;
    }
    declare_exchange(
        &ch,
        "bottom",
        ExchangeKind::Custom("json-router".into()),
        options,
    )
    .await;
    for (destination, source) in [
        ("left", "top"),
        ("right", "top"),
        ("bottom", "left"),
        ("bottom", "right"),
    ] {
        bind_exchange(&ch, destination, source, "").await;
    }
    // A json-router binding takes every message with `match: true`.
    let mut always = FieldTable::default();
    always.insert("match".into(), AMQPValue::Boolean(true));
    within(ch.exchange_bind(
        "top".into(),
        "bottom".into(),
        "".into(),
        ExchangeBindOptions::default(),
        always,
    ))
    .await
    .unwrap();
    declare_bound_queue(&ch, "top-q", "top", "").await;
    declare_bound_queue(&ch, "left-q", "left", "").await;
    within(ch.queue_declare("big-q".into(), durable_queue(), no_args()))
        .await
        .unwrap();
    let mut matching = FieldTable::default();
    matching.insert("match".into(), AMQPValue::LongString("amount > 100".into()));
    within(ch.queue_bind(
        "big-q".into(),
        "bottom".into(),
        "".into(),
        QueueBindOptions::default(),
        matching,
    ))
    .await
    .unwrap();
    // bottom → top loops back, and top is reached twice more (left, right): every queue
    // still gets one copy.
    let publisher = confirm_channel(&conn).await;
    for (round, amount) in [(1, 500), (2, 5)] {
        let body = format!(r#"{{"round":{round},"amount":{amount}}}"#);
        publish_confirmed(
            &publisher,
            "top",
            "",
            body.as_bytes(),
            BasicProperties::default(),
        )
        .await;
    }
    assert_eq!(drain(&ch, "top-q").await.len(), 2);
    assert_eq!(drain(&ch, "left-q").await.len(), 2);
    let big = drain(&ch, "big-q").await;
    assert_eq!(big, vec![br#"{"round":1,"amount":500}"#.to_vec()]);
    // Publishing into the cycle's middle reaches the same queues once each too.
    publish_confirmed(
        &publisher,
        "bottom",
        "",
        br#"{"amount":1000}"#,
        BasicProperties::default(),
    )
    .await;
    assert_eq!(drain(&ch, "top-q").await.len(), 1);
    assert_eq!(drain(&ch, "left-q").await.len(), 1);
    assert_eq!(drain(&ch, "big-q").await.len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn exchange_bindings_over_json_and_their_errors() {
    let broker = AmqpBroker::start().await;
    let json = broker.json_client().await;
    json.declare_exchange("src", "topic", false, Headers::new())
        .await
        .unwrap();
    json.declare_exchange("dst", "fanout", false, Headers::new())
        .await
        .unwrap();
    let binding = |source: &str, destination: &str, key: &str| ExchangeBinding {
        source: source.into(),
        destination: destination.into(),
        key: key.into(),
        arguments: Headers::new(),
    };
    // The default exchange cannot be either end; a missing exchange is not found; a bad
    // topic pattern is the plugin's to refuse.
    let refused = json
        .bind_exchange(binding("", "dst", "k"))
        .await
        .unwrap_err();
    assert_eq!(
        refused.code(),
        Some(ErrorCode::AccessRefused),
        "{refused:?}"
    );
    let refused = json
        .bind_exchange(binding("src", "nope", "k"))
        .await
        .unwrap_err();
    assert_eq!(
        refused.code(),
        Some(ErrorCode::ExchangeNotFound),
        "{refused:?}"
    );
    let refused = json
        .bind_exchange(binding("nope", "dst", "k"))
        .await
        .unwrap_err();
    assert_eq!(
        refused.code(),
        Some(ErrorCode::ExchangeNotFound),
        "{refused:?}"
    );
    json.bind_exchange(binding("src", "dst", "a.*"))
        .await
        .unwrap();
    json.declare_queue("dst-q", broker::QueueOptions::default())
        .await
        .unwrap();
    json.bind(broker::protocol::Binding {
        exchange: "dst".into(),
        queue: "dst-q".into(),
        key: String::new(),
        arguments: Headers::new(),
    })
    .await
    .unwrap();
    json.confirm_select().await.unwrap();
    json.publish(message("src", "a.b", "yes"), false)
        .await
        .unwrap();
    json.publish(message("src", "b.b", "no"), false)
        .await
        .unwrap();
    assert_eq!(json.queue_info("dst-q").await.unwrap().ready, 1);
    // `route` shows the queue behind the hop.
    let traced = json.route(message("src", "a.c", "")).await.unwrap();
    assert_eq!(traced["queues"], serde_json::json!(["dst-q"]), "{traced}");
    // exchange.delete's if_unused counts the source's exchange bindings.
    let conn = broker.connect().await;
    let ch = conn.create_channel().await.unwrap();
    let if_unused = ExchangeDeleteOptions {
        if_unused: true,
        ..Default::default()
    };
    let refused = within(ch.exchange_delete("src".into(), if_unused))
        .await
        .unwrap_err();
    assert_eq!(amqp::reply_code(&refused), Some(406), "{refused:?}");
    json.unbind_exchange(binding("src", "dst", "a.*"))
        .await
        .unwrap();
    // Unbinding again is fine, as in AMQP.
    json.unbind_exchange(binding("src", "dst", "a.*"))
        .await
        .unwrap();
    json.publish(message("src", "a.b", "gone"), false)
        .await
        .unwrap();
    assert_eq!(json.queue_info("dst-q").await.unwrap().ready, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_destination_plugin_fails_the_publish_whole_and_is_contained() {
    let broker = AmqpBroker::start().await;
    let json = broker.json_client().await;
    // `trapper` traps on the routing key `boom`, else routes by key (tests/plugins/trap).
    json.deploy_plugin("trapper", &hostile::plugin("trap"))
        .await
        .unwrap();
    json.declare_exchange("gate", "fanout", false, Headers::new())
        .await
        .unwrap();
    json.declare_exchange("trapped", "trapper", false, Headers::new())
        .await
        .unwrap();
    let queue_binding = |exchange: &str, queue: &str, key: &str| broker::protocol::Binding {
        exchange: exchange.into(),
        queue: queue.into(),
        key: key.into(),
        arguments: Headers::new(),
    };
    for queue in ["direct-q", "hop-q"] {
        json.declare_queue(queue, broker::QueueOptions::default())
            .await
            .unwrap();
    }
    json.bind(queue_binding("gate", "direct-q", ""))
        .await
        .unwrap();
    json.bind(queue_binding("trapped", "hop-q", "ok"))
        .await
        .unwrap();
    let hop = ExchangeBinding {
        source: "gate".into(),
        destination: "trapped".into(),
        key: String::new(),
        arguments: Headers::new(),
    };
    json.bind_exchange(hop.clone()).await.unwrap();
    json.confirm_select().await.unwrap();
    let ready = |queue: &'static str| {
        let json = &json;
        async move { json.queue_info(queue).await.unwrap().ready }
    };

    json.publish(message("gate", "ok", "1"), false)
        .await
        .unwrap();
    assert_eq!((ready("direct-q").await, ready("hop-q").await), (1, 1));
    // The second hop traps: the publish fails whole, the first hop's queue gets nothing.
    let failed = json
        .publish(message("gate", "boom", "2"), false)
        .await
        .unwrap_err();
    assert_eq!(failed.code(), Some(ErrorCode::PluginError), "{failed:?}");
    assert_eq!((ready("direct-q").await, ready("hop-q").await), (1, 1));
    // Its own quarantine (5 failures in a row) applies: then it refuses without a call.
    for _ in 0..4 {
        let _ = json.publish(message("gate", "boom", "x"), false).await;
    }
    let refused = json
        .publish(message("gate", "ok", "3"), false)
        .await
        .unwrap_err();
    assert_eq!(
        refused.code(),
        Some(ErrorCode::ExchangeUnavailable),
        "{refused:?}"
    );
    let trapped = exchange_info(&json, "trapped").await.unwrap();
    assert!(trapped.quarantined, "{trapped:?}");
    // Unbound, the failing exchange is out of the way: `gate` routes again.
    json.unbind_exchange(hop).await.unwrap();
    json.publish(message("gate", "boom", "4"), false)
        .await
        .unwrap();
    assert_eq!((ready("direct-q").await, ready("hop-q").await), (2, 1));
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
