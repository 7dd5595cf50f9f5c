//! AMQP methods with lapin: exchanges, queues (passive, exclusive, server-named,
//! redeclared), bindings, basic.get, consumers, acks, confirms, returns; each answered as
//! RabbitMQ answers it, through the core's shared operations.

#[path = "support/amqp.rs"]
mod amqp;

use amqp::{AmqpBroker, next_delivery, next_error_code, reply_code, within};
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Confirmation, ExchangeKind};

fn no_args() -> FieldTable {
    FieldTable::default()
}

async fn publish(channel: &Channel, exchange: &str, key: &str, body: &[u8]) -> Confirmation {
    within(async {
        channel
            .basic_publish(
                exchange.into(),
                key.into(),
                BasicPublishOptions::default(),
                body,
                BasicProperties::default(),
            )
            .await
            .unwrap()
            .await
            .unwrap()
    })
    .await
}

async fn get(
    channel: &Channel,
    queue: &str,
    no_ack: bool,
) -> Option<lapin::message::BasicGetMessage> {
    within(channel.basic_get(queue.into(), BasicGetOptions { no_ack }))
        .await
        .unwrap()
}

#[tokio::test]
async fn exchanges_bindings_and_basic_get() {
    let broker = AmqpBroker::start().await;
    let conn = broker.connect().await;
    let ch = conn.create_channel().await.unwrap();
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.exchange_declare("orders".into(), ExchangeKind::Direct, durable, no_args())
        .await
        .unwrap();
    // auto_delete: deleted with its last binding (this one never gets one).
    let auto_delete = ExchangeDeclareOptions {
        auto_delete: true,
        ..Default::default()
    };
    ch.exchange_declare(
        "pidbox".into(),
        ExchangeKind::Direct,
        auto_delete,
        no_args(),
    )
    .await
    .unwrap();
    // Passive: the exchange exists.
    let passive = ExchangeDeclareOptions {
        passive: true,
        ..Default::default()
    };
    ch.exchange_declare("orders".into(), ExchangeKind::Direct, passive, no_args())
        .await
        .unwrap();
    // A server-named queue, bound by the empty name (the channel's last queue).
    let queue = ch
        .queue_declare("".into(), QueueDeclareOptions::default(), no_args())
        .await
        .unwrap();
    let name = queue.name().as_str().to_string();
    assert!(name.starts_with("gen-"), "{name}");
    ch.queue_bind(
        "".into(),
        "orders".into(),
        "eu".into(),
        QueueBindOptions::default(),
        no_args(),
    )
    .await
    .unwrap();
    publish(&ch, "orders", "eu", b"one").await;
    publish(&ch, "orders", "us", b"unrouted").await;
    publish(&ch, "orders", "eu", b"two").await;
    let first = get(&ch, &name, false).await.expect("a message");
    assert_eq!(first.delivery.data, b"one");
    assert_eq!(first.message_count, 1);
    assert_eq!(first.delivery.exchange.as_str(), "orders");
    // Unacked: a purge leaves it, takes the other.
    assert_eq!(
        ch.queue_purge(name.as_str().into(), QueuePurgeOptions::default())
            .await
            .unwrap(),
        1
    );
    assert!(get(&ch, &name, true).await.is_none(), "get-empty");
    // if_empty refuses while the got message is unacked: 406 closes the channel.
    let if_empty = QueueDeleteOptions {
        if_empty: true,
        ..Default::default()
    };
    let refused = ch
        .queue_delete(name.as_str().into(), if_empty)
        .await
        .unwrap_err();
    assert_eq!(reply_code(&refused), Some(406), "{refused:?}");
    assert!(!ch.status().connected());
    // Its channel closed: the unacked message went back. Another channel deletes it all.
    let ch2 = conn.create_channel().await.unwrap();
    ch2.queue_unbind(
        name.as_str().into(),
        "orders".into(),
        "eu".into(),
        no_args(),
    )
    .await
    .unwrap();
    assert_eq!(
        ch2.queue_delete(name.as_str().into(), QueueDeleteOptions::default())
            .await
            .unwrap(),
        1
    );
    // Deleting the exchange; a passive declare then finds nothing: 404.
    ch2.exchange_delete("orders".into(), ExchangeDeleteOptions::default())
        .await
        .unwrap();
    let missing = ch2
        .exchange_declare("orders".into(), ExchangeKind::Direct, passive, no_args())
        .await
        .unwrap_err();
    assert_eq!(reply_code(&missing), Some(404), "{missing:?}");
    // The connection is still good.
    assert!(conn.status().connected());
}

/// A queue declared with the CLI or the JSON protocol (dead letters to `<queue>.dlq` by
/// default) is declared again by a RabbitMQ client without dead-letter arguments (which
/// implies none), and the reverse; a real difference is still refused.
#[tokio::test]
async fn a_native_queue_is_redeclared_by_a_rabbitmq_client_and_the_reverse() {
    let broker = AmqpBroker::start().await;
    let json = broker.json_client().await;
    let durable = broker::client::QueueOptions::durable();
    json.declare_queue("orders", durable.clone()).await.unwrap();
    let conn = broker.connect().await;
    let ch = conn.create_channel().await.unwrap();
    let amqp_durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.queue_declare("orders".into(), amqp_durable, no_args())
        .await
        .unwrap();
    ch.queue_declare("made-by-amqp".into(), amqp_durable, no_args())
        .await
        .unwrap();
    json.declare_queue("made-by-amqp", durable.clone())
        .await
        .unwrap();
    // The JSON declaration did not change the queue's policy: still no dead-letter queue.
    let info = json.queue_info("made-by-amqp").await.unwrap();
    assert_eq!(
        info.arguments.get("dead_letter"),
        Some(&serde_json::Value::Bool(false)),
        "{info:?}"
    );
    let transient = ch
        .queue_declare("orders".into(), QueueDeclareOptions::default(), no_args())
        .await
        .unwrap_err();
    assert_eq!(reply_code(&transient), Some(406), "{transient:?}");
}

#[tokio::test]
async fn redeclares_and_exclusive_queues_follow_rabbitmq() {
    let broker = AmqpBroker::start().await;
    let conn = broker.connect().await;
    let ch = conn.create_channel().await.unwrap();
    let mut ttl = FieldTable::default();
    ttl.insert("x-message-ttl".into(), AMQPValue::LongInt(60_000));
    ch.queue_declare("q".into(), QueueDeclareOptions::default(), ttl.clone())
        .await
        .unwrap();
    ch.queue_declare("q".into(), QueueDeclareOptions::default(), ttl)
        .await
        .unwrap();
    let different = ch
        .queue_declare("q".into(), QueueDeclareOptions::default(), no_args())
        .await
        .unwrap_err();
    assert_eq!(reply_code(&different), Some(406), "{different:?}");
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let ch = conn.create_channel().await.unwrap();
    let missing = ch
        .queue_declare("nope".into(), passive, no_args())
        .await
        .unwrap_err();
    assert_eq!(reply_code(&missing), Some(404), "{missing:?}");
    // An exclusive queue belongs to the connection: its other channels use it...
    let exclusive = QueueDeclareOptions {
        exclusive: true,
        ..Default::default()
    };
    let ch1 = conn.create_channel().await.unwrap();
    ch1.queue_declare("mine".into(), exclusive, no_args())
        .await
        .unwrap();
    let ch2 = conn.create_channel().await.unwrap();
    ch2.basic_consume(
        "mine".into(),
        "".into(),
        BasicConsumeOptions::default(),
        no_args(),
    )
    .await
    .unwrap();
    // ...and survives its declaring channel's close; other connections get 405.
    ch1.close(200, "done".into()).await.unwrap();
    let other = broker.connect().await;
    let och = other.create_channel().await.unwrap();
    let locked = och
        .basic_consume(
            "mine".into(),
            "".into(),
            BasicConsumeOptions::default(),
            no_args(),
        )
        .await
        .unwrap_err();
    assert_eq!(reply_code(&locked), Some(405), "{locked:?}");
    // Closing the owning connection deletes it.
    conn.close(200, "bye".into()).await.unwrap();
    let och = other.create_channel().await.unwrap();
    let gone = within(async {
        loop {
            match och.queue_declare("mine".into(), passive, no_args()).await {
                Ok(_) => tokio::task::yield_now().await,
                Err(e) => break e,
            }
        }
    })
    .await;
    assert_eq!(reply_code(&gone), Some(404), "{gone:?}");
}

/// Arguments of a queue that holds one message, with `x-overflow` `overflow`.
fn one_message_queue(overflow: &str) -> FieldTable {
    let mut arguments = FieldTable::default();
    arguments.insert("x-max-length".into(), AMQPValue::LongInt(1));
    arguments.insert("x-overflow".into(), AMQPValue::LongString(overflow.into()));
    arguments
}

#[tokio::test]
async fn confirms_returns_and_negative_confirms() {
    let broker = AmqpBroker::start().await;
    let conn = broker.connect().await;
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let one = one_message_queue("reject-publish");
    ch.queue_declare("one".into(), QueueDeclareOptions::default(), one)
        .await
        .unwrap();
    assert_eq!(publish(&ch, "", "one", b"a").await, Confirmation::Ack(None));
    assert!(matches!(
        publish(&ch, "", "one", b"b").await,
        Confirmation::Nack(_)
    ));
    // `reject-publish-dlx`: refused the same way, and the refused message dead-lettered.
    ch.queue_declare(
        "refused".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let mut dlx = one_message_queue("reject-publish-dlx");
    dlx.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString("".into()),
    );
    dlx.insert(
        "x-dead-letter-routing-key".into(),
        AMQPValue::LongString("refused".into()),
    );
    ch.queue_declare("one-dlx".into(), QueueDeclareOptions::default(), dlx)
        .await
        .unwrap();
    assert_eq!(
        publish(&ch, "", "one-dlx", b"kept").await,
        Confirmation::Ack(None)
    );
    assert!(matches!(
        publish(&ch, "", "one-dlx", b"over").await,
        Confirmation::Nack(_)
    ));
    let dead = within(ch.basic_get("refused".into(), BasicGetOptions { no_ack: true }))
        .await
        .unwrap()
        .expect("the refused message was dead-lettered");
    assert_eq!(dead.delivery.data, b"over");
    let headers = dead
        .delivery
        .properties
        .headers()
        .clone()
        .unwrap_or_default();
    let Some(AMQPValue::FieldArray(deaths)) = headers.inner().get("x-death") else {
        panic!("no x-death: {headers:?}");
    };
    let Some(AMQPValue::FieldTable(death)) = deaths.as_slice().first() else {
        panic!("empty x-death");
    };
    assert_eq!(
        death.inner().get("reason"),
        Some(&AMQPValue::LongString("maxlen".into()))
    );
    // Mandatory and unroutable: basic.return, then the ack.
    let mandatory = BasicPublishOptions {
        mandatory: true,
        ..Default::default()
    };
    let confirm = within(async {
        ch.basic_publish(
            "".into(),
            "nowhere".into(),
            mandatory,
            b"lost",
            BasicProperties::default(),
        )
        .await
        .unwrap()
        .await
        .unwrap()
    })
    .await;
    let Confirmation::Ack(Some(returned)) = confirm else {
        panic!("expected an ack with the returned message, got {confirm:?}");
    };
    assert_eq!(returned.reply_code, 312);
    assert_eq!(returned.delivery.data, b"lost");
    // A publish to a missing exchange closes the channel with 404.
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let mut events = Box::pin(conn.events_listener());
    let _ = ch
        .basic_publish(
            "no-such".into(),
            "k".into(),
            BasicPublishOptions::default(),
            b"x",
            BasicProperties::default(),
        )
        .await;
    assert_eq!(next_error_code(&mut events).await, 404);
}

#[tokio::test]
async fn acks_nacks_rejects_qos_and_recover() {
    let broker = AmqpBroker::start().await;
    let conn = broker.connect().await;
    let ch = conn.create_channel().await.unwrap();
    ch.queue_declare("work".into(), QueueDeclareOptions::default(), no_args())
        .await
        .unwrap();
    for body in [b"1", b"2", b"3", b"4"] {
        publish(&ch, "", "work", body).await;
    }
    ch.basic_qos(2, BasicQosOptions::default()).await.unwrap();
    let mut consumer = ch
        .basic_consume(
            "work".into(),
            "c".into(),
            BasicConsumeOptions::default(),
            no_args(),
        )
        .await
        .unwrap();
    let d1 = next_delivery(&mut consumer).await;
    let d2 = next_delivery(&mut consumer).await;
    // Prefetch 2: nothing more until an ack.
    assert!(
        tokio::time::timeout(
            std::time::Duration::from_millis(300),
            futures_util::StreamExt::next(&mut consumer)
        )
        .await
        .is_err()
    );
    ch.basic_ack(d2.delivery_tag, BasicAckOptions { multiple: true })
        .await
        .unwrap();
    let _ = d1;
    let d3 = next_delivery(&mut consumer).await;
    let d4 = next_delivery(&mut consumer).await;
    assert_eq!(
        (d3.data.as_slice(), d4.data.as_slice()),
        (&b"3"[..], &b"4"[..])
    );
    // Nack with requeue: back, redelivered.
    ch.basic_nack(
        d3.delivery_tag,
        BasicNackOptions {
            multiple: false,
            requeue: true,
        },
    )
    .await
    .unwrap();
    let again = next_delivery(&mut consumer).await;
    assert_eq!(again.data, b"3");
    assert!(again.redelivered);
    // Reject without requeue: dropped (no dead-letter exchange, as in RabbitMQ).
    ch.basic_reject(again.delivery_tag, BasicRejectOptions { requeue: false })
        .await
        .unwrap();
    // Recover: the still unacked "4" comes back.
    ch.basic_recover(BasicRecoverOptions { requeue: true })
        .await
        .unwrap();
    let recovered = next_delivery(&mut consumer).await;
    assert_eq!(recovered.data, b"4");
    assert!(recovered.redelivered);
    recovered.ack(BasicAckOptions::default()).await.unwrap();
    // An unknown tag closes the channel with 406.
    let mut events = Box::pin(conn.events_listener());
    ch.basic_ack(999, BasicAckOptions::default()).await.unwrap();
    assert_eq!(next_error_code(&mut events).await, 406);
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let ch = conn.create_channel().await.unwrap();
    let left = ch
        .queue_declare("work".into(), passive, no_args())
        .await
        .unwrap();
    assert_eq!(left.message_count(), 0);
}

#[tokio::test]
async fn deleting_a_queue_cancels_its_amqp_consumers() {
    let broker = AmqpBroker::start().await;
    let conn = broker.connect().await;
    let ch = conn.create_channel().await.unwrap();
    ch.queue_declare("doomed".into(), QueueDeclareOptions::default(), no_args())
        .await
        .unwrap();
    let mut consumer = ch
        .basic_consume(
            "doomed".into(),
            "watcher".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            no_args(),
        )
        .await
        .unwrap();
    publish(&ch, "", "doomed", b"x").await;
    assert_eq!(next_delivery(&mut consumer).await.data, b"x");
    let other = conn.create_channel().await.unwrap();
    other
        .queue_delete("doomed".into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    // The broker's basic.cancel ends the consumer's stream.
    let end = within(futures_util::StreamExt::next(&mut consumer)).await;
    assert!(end.is_none(), "{end:?}");
    assert!(ch.status().connected());
}

#[tokio::test]
async fn immediate_is_not_implemented() {
    let broker = AmqpBroker::start().await;
    let conn = broker.connect().await;
    let ch = conn.create_channel().await.unwrap();
    let immediate = BasicPublishOptions {
        immediate: true,
        ..Default::default()
    };
    let _ = ch
        .basic_publish(
            "".into(),
            "k".into(),
            immediate,
            b"x",
            BasicProperties::default(),
        )
        .await;
    let closed = within(async {
        loop {
            if let Err(e) = ch
                .queue_declare("probe".into(), QueueDeclareOptions::default(), no_args())
                .await
            {
                break e;
            }
        }
    })
    .await;
    assert!(!conn.status().connected(), "{closed:?}");
}

#[tokio::test]
async fn list_connections_shows_an_amqp_connection_once_with_its_channels() {
    let broker = AmqpBroker::start().await;
    let conn = broker.connect().await;
    let ch1 = conn.create_channel().await.unwrap();
    let _ch2 = conn.create_channel().await.unwrap();
    ch1.queue_declare("listed".into(), QueueDeclareOptions::default(), no_args())
        .await
        .unwrap();
    // Kept: lapin cancels a consumer it drops.
    let _consumer = ch1
        .basic_consume(
            "listed".into(),
            "tag-1".into(),
            BasicConsumeOptions::default(),
            no_args(),
        )
        .await
        .unwrap();
    let json = broker.json_client().await;
    let list = json.list_connections().await.unwrap();
    let amqp: Vec<_> = list
        .iter()
        .filter(|c| c.protocol == broker::protocol::WireProtocol::Amqp)
        .collect();
    assert_eq!(amqp.len(), 1, "{list:?}");
    assert_eq!(amqp[0].channels, 2);
    assert_eq!(amqp[0].user, "guest");
    assert_eq!(amqp[0].consumers.len(), 1, "{list:?}");
    assert_eq!(amqp[0].consumers[0].consumer_tag, "tag-1");
    let json_rows = list
        .iter()
        .filter(|c| c.protocol == broker::protocol::WireProtocol::Json)
        .count();
    assert_eq!(json_rows, 1, "{list:?}");
}

#[tokio::test]
async fn an_exclusive_consumer_is_the_only_one() {
    let broker = AmqpBroker::start().await;
    let conn = broker.connect().await;
    let ch = conn.create_channel().await.unwrap();
    ch.queue_declare("solo".into(), QueueDeclareOptions::default(), no_args())
        .await
        .unwrap();
    let exclusive = BasicConsumeOptions {
        exclusive: true,
        ..Default::default()
    };
    let _only = ch
        .basic_consume("solo".into(), "only".into(), exclusive, no_args())
        .await
        .unwrap();
    let other = conn.create_channel().await.unwrap();
    let refused = other
        .basic_consume(
            "solo".into(),
            "second".into(),
            BasicConsumeOptions::default(),
            no_args(),
        )
        .await
        .unwrap_err();
    assert_eq!(reply_code(&refused), Some(403), "{refused:?}");
    // And an exclusive consumer is refused where another consumer is.
    ch.queue_declare("shared".into(), QueueDeclareOptions::default(), no_args())
        .await
        .unwrap();
    let _first = ch
        .basic_consume(
            "shared".into(),
            "first".into(),
            BasicConsumeOptions::default(),
            no_args(),
        )
        .await
        .unwrap();
    let other = conn.create_channel().await.unwrap();
    let refused = other
        .basic_consume("shared".into(), "x".into(), exclusive, no_args())
        .await
        .unwrap_err();
    assert_eq!(reply_code(&refused), Some(403), "{refused:?}");
}
