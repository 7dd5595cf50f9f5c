//! Exchange-to-exchange bindings with lapin against the real broker (`exchange.bind` /
//! `unbind`, the JSON `bind_exchange`): routed again by the destination with the same key
//! and headers, once per queue through cycles and diamonds, stored, removed with either
//! exchange, and a failing destination plugin contained.

#[path = "support/amqp.rs"]
mod amqp;
#[path = "support/amqp_exchange_helpers.rs"]
mod helpers;
#[path = "support/hostile.rs"]
mod hostile;
#[path = "support/stomp.rs"]
mod stomp;

use amqp::{AmqpBroker, within};
use broker::Headers;
use broker::protocol::{ErrorCode, ExchangeBinding};
use helpers::*;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, ExchangeKind};

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
