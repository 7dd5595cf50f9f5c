//! What RabbitMQ applications rely on beyond the spec's methods, with lapin: the
//! predeclared `amq.*` exchanges of every vhost, `x-expires`, `basic.qos` with `global`,
//! and direct reply-to.

#[path = "support/amqp.rs"]
mod amqp;

use std::time::{Duration, Instant};

use amqp::{AmqpBroker, WAIT, next_delivery, next_error_code, reply_code, within};
use broker::protocol::SetPermissions;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};

const PREDECLARED: [(&str, &str); 5] = [
    ("amq.direct", "direct"),
    ("amq.fanout", "fanout"),
    ("amq.topic", "topic"),
    ("amq.headers", "headers"),
    ("amq.match", "headers"),
];

fn no_args() -> FieldTable {
    FieldTable::default()
}

fn kind(name: &str) -> ExchangeKind {
    match name {
        "direct" => ExchangeKind::Direct,
        "fanout" => ExchangeKind::Fanout,
        "topic" => ExchangeKind::Topic,
        "headers" => ExchangeKind::Headers,
        other => ExchangeKind::Custom(other.into()),
    }
}

async fn publish_confirmed(channel: &Channel, exchange: &str, key: &str, body: &[u8]) {
    let confirm = within(async {
        channel
            .basic_publish(
                exchange.into(),
                key.into(),
                BasicPublishOptions::default(),
                body,
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .unwrap()
            .await
            .unwrap()
    })
    .await;
    assert!(confirm.is_ack(), "{confirm:?}");
}

/// Passive declares of every predeclared exchange on a new channel of `conn`.
async fn assert_predeclared(conn: &Connection) {
    let ch = conn.create_channel().await.unwrap();
    let passive = ExchangeDeclareOptions {
        passive: true,
        ..Default::default()
    };
    for (name, type_name) in PREDECLARED {
        ch.exchange_declare(name.into(), kind(type_name), passive, no_args())
            .await
            .unwrap_or_else(|e| panic!("{name}: {e:?}"));
    }
}

#[tokio::test]
async fn every_vhost_has_the_amq_exchanges_and_they_are_the_brokers() {
    let mut broker = AmqpBroker::start().await;
    let conn = broker.connect().await;
    assert_predeclared(&conn).await;

    // amq.topic routes by pattern to a durable queue bound to it.
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.queue_declare("audit".into(), durable, no_args())
        .await
        .unwrap();
    ch.queue_bind(
        "audit".into(),
        "amq.topic".into(),
        "user.#".into(),
        QueueBindOptions::default(),
        no_args(),
    )
    .await
    .unwrap();
    let mut consumer = ch
        .basic_consume(
            "audit".into(),
            "".into(),
            BasicConsumeOptions::default(),
            no_args(),
        )
        .await
        .unwrap();
    publish_confirmed(&ch, "amq.topic", "order.created", b"not for audit").await;
    publish_confirmed(&ch, "amq.topic", "user.created", b"alice").await;
    let delivery = next_delivery(&mut consumer).await;
    assert_eq!(delivery.data, b"alice");
    assert_eq!(delivery.exchange.as_str(), "amq.topic");
    assert_eq!(delivery.routing_key.as_str(), "user.created");
    delivery.ack(BasicAckOptions::default()).await.unwrap();

    // An equivalent redeclare is fine (clients redeclare amq.topic routinely).
    let same = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.exchange_declare("amq.topic".into(), ExchangeKind::Topic, same, no_args())
        .await
        .unwrap();
    // Another type: 406, as for any existing exchange.
    let other = conn.create_channel().await.unwrap();
    let refused = other
        .exchange_declare("amq.topic".into(), ExchangeKind::Fanout, same, no_args())
        .await
        .unwrap_err();
    assert_eq!(reply_code(&refused), Some(406), "{refused:?}");
    // A new `amq.` name: 403, as RabbitMQ.
    let other = conn.create_channel().await.unwrap();
    let refused = other
        .exchange_declare("amq.mine".into(), ExchangeKind::Direct, same, no_args())
        .await
        .unwrap_err();
    assert_eq!(reply_code(&refused), Some(403), "{refused:?}");
    // Deleting one: 403, and it is still there.
    for (name, _) in PREDECLARED {
        let other = conn.create_channel().await.unwrap();
        let refused = other
            .exchange_delete(name.into(), ExchangeDeleteOptions::default())
            .await
            .unwrap_err();
        assert_eq!(reply_code(&refused), Some(403), "{name}: {refused:?}");
    }
    assert_predeclared(&conn).await;
    drop(consumer);
    let _ = conn.close(200, "bye".into()).await;

    // Durable: after a restart the binding to amq.topic still routes.
    broker.restart().await;
    let conn = broker.connect().await;
    assert_predeclared(&conn).await;
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    publish_confirmed(&ch, "amq.topic", "user.deleted", b"bob").await;
    let got = within(ch.basic_get("audit".into(), BasicGetOptions { no_ack: true }))
        .await
        .unwrap()
        .expect("routed through the restored binding");
    assert_eq!(got.delivery.data, b"bob");

    // A new vhost has its own; deleting and re-adding the vhost leaves a fresh set.
    let admin = broker.json_client().await;
    for round in 0..2 {
        admin.add_vhost("prod").await.unwrap();
        admin
            .set_permissions(SetPermissions {
                user: "guest".into(),
                vhost: "prod".into(),
                configure: ".*".into(),
                write: ".*".into(),
                read: ".*".into(),
                plugin: false,
            })
            .await
            .unwrap();
        let uri = format!("amqp://guest:guest@{}/prod", broker.amqp_addr());
        let prod = within(Connection::connect(&uri, ConnectionProperties::default()))
            .await
            .unwrap();
        assert_predeclared(&prod).await;
        let ch = prod.create_channel().await.unwrap();
        let queue = ch
            .queue_declare("".into(), QueueDeclareOptions::default(), no_args())
            .await
            .unwrap();
        ch.queue_bind(
            queue.name().as_str().into(),
            "amq.fanout".into(),
            "".into(),
            QueueBindOptions::default(),
            no_args(),
        )
        .await
        .unwrap();
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        publish_confirmed(
            &ch,
            "amq.fanout",
            "any",
            format!("round {round}").as_bytes(),
        )
        .await;
        let got = within(ch.basic_get(
            queue.name().as_str().into(),
            BasicGetOptions { no_ack: true },
        ))
        .await
        .unwrap()
        .expect("fanned out");
        assert_eq!(got.delivery.data, format!("round {round}").as_bytes());
        admin.delete_vhost("prod").await.unwrap();
    }
}

/// Whether queue `name` exists (a passive declare, which is no use of the queue for
/// `x-expires`); a channel of its own, since a 404 closes it.
async fn queue_exists(conn: &Connection, name: &str) -> bool {
    let ch = conn.create_channel().await.unwrap();
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    match within(ch.queue_declare(name.into(), passive, no_args())).await {
        Ok(_) => true,
        Err(e) => {
            assert_eq!(reply_code(&e), Some(404), "{e:?}");
            false
        }
    }
}

/// Polls until queue `name` is gone; fails after [`WAIT`].
async fn wait_until_gone(conn: &Connection, name: &str) {
    let deadline = Instant::now() + WAIT;
    while queue_exists(conn, name).await {
        assert!(Instant::now() < deadline, "`{name}` still exists");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn expires(ms: i32) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert("x-expires".into(), AMQPValue::LongInt(ms));
    args
}

#[tokio::test]
async fn a_queue_unused_for_its_x_expires_is_deleted() {
    let mut broker = AmqpBroker::start().await;
    let conn = broker.connect().await;
    let ch = conn.create_channel().await.unwrap();
    // `busy` has a consumer from the start, `idle` none; both expire after 300 ms unused.
    ch.queue_declare("busy".into(), QueueDeclareOptions::default(), expires(300))
        .await
        .unwrap();
    let consumer = ch
        .basic_consume(
            "busy".into(),
            "".into(),
            BasicConsumeOptions::default(),
            no_args(),
        )
        .await
        .unwrap();
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.queue_declare("idle".into(), durable, expires(300))
        .await
        .unwrap();
    ch.queue_declare("forever".into(), durable, no_args())
        .await
        .unwrap();
    wait_until_gone(&conn, "idle").await;
    // Declared before `idle`, `busy` is still there: a consumer is a use.
    assert!(queue_exists(&conn, "busy").await);
    assert!(queue_exists(&conn, "forever").await);
    // Its period starts when its last consumer leaves.
    ch.basic_cancel(consumer.tag(), BasicCancelOptions::default())
        .await
        .unwrap();
    wait_until_gone(&conn, "busy").await;
    // Over JSON too: the core argument `expires`; a stored queue leaves the store.
    let json = broker.json_client().await;
    let names: Vec<String> = json
        .list_queues()
        .await
        .unwrap()
        .into_iter()
        .map(|q| q.queue)
        .collect();
    assert_eq!(names, ["forever"]);
    // 0 is no expiry: 406, as RabbitMQ.
    let refused = ch
        .queue_declare("never".into(), QueueDeclareOptions::default(), expires(0))
        .await
        .unwrap_err();
    assert_eq!(reply_code(&refused), Some(406), "{refused:?}");
    // The durable `idle` left the store too: it does not come back after a restart.
    drop(json);
    let _ = conn.close(200, "bye".into()).await;
    broker.restart().await;
    let conn = broker.connect().await;
    assert!(queue_exists(&conn, "forever").await);
    assert!(!queue_exists(&conn, "idle").await);
}

/// Publishes `count` messages to queue `queue` through the default exchange, confirmed.
async fn fill(channel: &Channel, queue: &str, count: usize) {
    for n in 0..count {
        publish_confirmed(channel, "", queue, format!("{queue} {n}").as_bytes()).await;
    }
}

/// The ready messages of `queues` together (passive declares).
async fn ready(channel: &Channel, queues: &[&str]) -> u32 {
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let mut total = 0;
    for queue in queues {
        let info = channel
            .queue_declare((*queue).into(), passive, no_args())
            .await
            .unwrap();
        total += info.message_count();
    }
    total
}

#[tokio::test]
async fn basic_qos_global_is_shared_by_the_channels_consumers() {
    let broker = AmqpBroker::start().await;
    let conn = broker.connect().await;
    let admin = conn.create_channel().await.unwrap();
    admin
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let queues = ["a", "b", "c", "d"];
    for queue in queues {
        admin
            .queue_declare(queue.into(), QueueDeclareOptions::default(), no_args())
            .await
            .unwrap();
        fill(&admin, queue, 5).await;
    }

    // global=true: 3 unacked deliveries for the whole channel, over both its consumers.
    let shared = conn.create_channel().await.unwrap();
    shared
        .basic_qos(3, BasicQosOptions { global: true })
        .await
        .unwrap();
    let mut on_a = shared
        .basic_consume(
            "a".into(),
            "".into(),
            BasicConsumeOptions::default(),
            no_args(),
        )
        .await
        .unwrap();
    let mut on_b = shared
        .basic_consume(
            "b".into(),
            "".into(),
            BasicConsumeOptions::default(),
            no_args(),
        )
        .await
        .unwrap();
    let mut held = Vec::new();
    let deadline = Instant::now() + WAIT;
    while held.len() < 3 {
        assert!(Instant::now() < deadline, "3 deliveries in time");
        tokio::select! {
            d = next_delivery(&mut on_a) => held.push(d),
            d = next_delivery(&mut on_b) => held.push(d),
        }
    }
    // The router dispatched before it answered these: the rest stayed in the queues.
    assert_eq!(ready(&admin, &["a", "b"]).await, 7);
    // An ack makes room for exactly one more, from either queue.
    held.remove(0)
        .ack(BasicAckOptions::default())
        .await
        .unwrap();
    tokio::select! {
        d = next_delivery(&mut on_a) => held.push(d),
        d = next_delivery(&mut on_b) => held.push(d),
    }
    assert_eq!(ready(&admin, &["a", "b"]).await, 6);

    // global=false: the prefetch of each consumer started after it (2 + 2).
    let per_consumer = conn.create_channel().await.unwrap();
    per_consumer
        .basic_qos(2, BasicQosOptions { global: false })
        .await
        .unwrap();
    let mut consumers = Vec::new();
    for queue in ["c", "d"] {
        let consumer = per_consumer
            .basic_consume(
                queue.into(),
                "".into(),
                BasicConsumeOptions::default(),
                no_args(),
            )
            .await
            .unwrap();
        consumers.push(consumer);
    }
    for consumer in &mut consumers {
        for _ in 0..2 {
            next_delivery(consumer).await;
        }
    }
    assert_eq!(ready(&admin, &["c", "d"]).await, 6);
}

#[tokio::test]
async fn direct_reply_to_carries_an_rpc_round_trip() {
    let broker = AmqpBroker::start().await;
    let conn = broker.connect().await;
    // The server side: consumes requests from `rpc`.
    let server = conn.create_channel().await.unwrap();
    server
        .queue_declare("rpc".into(), QueueDeclareOptions::default(), no_args())
        .await
        .unwrap();
    let mut requests = server
        .basic_consume(
            "rpc".into(),
            "".into(),
            BasicConsumeOptions::default(),
            no_args(),
        )
        .await
        .unwrap();

    // The client, a user that may only publish (as in RabbitMQ, direct reply-to needs no
    // permission): a no-ack consumer of the pseudo-queue, then a request naming it.
    let admin = broker.json_client().await;
    admin.add_user("caller", "pw", &[]).await.unwrap();
    admin
        .set_permissions(SetPermissions {
            user: "caller".into(),
            vhost: "/".into(),
            configure: "^$".into(),
            write: ".*".into(),
            read: "^$".into(),
            plugin: false,
        })
        .await
        .unwrap();
    let uri = format!("amqp://caller:pw@{}/%2f", broker.amqp_addr());
    let client_conn = within(Connection::connect(&uri, ConnectionProperties::default()))
        .await
        .unwrap();
    let client = client_conn.create_channel().await.unwrap();
    let no_ack = BasicConsumeOptions {
        no_ack: true,
        ..Default::default()
    };
    let mut replies = client
        .basic_consume("amq.rabbitmq.reply-to".into(), "".into(), no_ack, no_args())
        .await
        .unwrap();
    client
        .basic_publish(
            "".into(),
            "rpc".into(),
            BasicPublishOptions::default(),
            b"ping",
            BasicProperties::default()
                .with_reply_to("amq.rabbitmq.reply-to".into())
                .with_correlation_id("call-1".into()),
        )
        .await
        .unwrap();

    let request = next_delivery(&mut requests).await;
    assert_eq!(request.data, b"ping");
    let reply_to = request
        .properties
        .reply_to()
        .clone()
        .expect("a reply address");
    assert!(
        reply_to.as_str().starts_with("amq.rabbitmq.reply-to."),
        "{reply_to}"
    );
    server
        .basic_publish(
            "".into(),
            reply_to.clone(),
            BasicPublishOptions::default(),
            b"pong",
            BasicProperties::default().with_correlation_id("call-1".into()),
        )
        .await
        .unwrap();
    request.ack(BasicAckOptions::default()).await.unwrap();
    let reply = next_delivery(&mut replies).await;
    assert_eq!(reply.data, b"pong");
    assert_eq!(
        reply
            .properties
            .correlation_id()
            .as_ref()
            .map(|c| c.as_str()),
        Some("call-1")
    );
    assert_eq!(reply.routing_key.as_str(), reply_to.as_str());

    // The reply consumer must be no-ack, and a request needs one: 406.
    let acking = client_conn.create_channel().await.unwrap();
    let refused = acking
        .basic_consume(
            "amq.rabbitmq.reply-to".into(),
            "".into(),
            BasicConsumeOptions::default(),
            no_args(),
        )
        .await
        .unwrap_err();
    assert_eq!(reply_code(&refused), Some(406), "{refused:?}");
    let lonely = client_conn.create_channel().await.unwrap();
    let mut events = Box::pin(client_conn.events_listener());
    let _ = lonely
        .basic_publish(
            "".into(),
            "rpc".into(),
            BasicPublishOptions::default(),
            b"no reply consumer",
            BasicProperties::default().with_reply_to("amq.rabbitmq.reply-to".into()),
        )
        .await;
    assert_eq!(next_error_code(&mut events).await, 406);
    let deadline = Instant::now() + WAIT;
    while lonely.status().connected() {
        assert!(
            Instant::now() < deadline,
            "the refused publish's channel closes"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The reply queue belongs to the client's channel: it goes when the channel closes.
    client.close(200, "done".into()).await.unwrap();
    wait_until_gone(&conn, reply_to.as_str()).await;
}
