//! RabbitMQ's plugin exchange types that a bundled plugin routes the same way, declared
//! by a RabbitMQ client (lapin) as RabbitMQ names them: `x-consistent-hash` (binding keys
//! are weights; `hash-header`) and `x-random`.

#[path = "support/amqp.rs"]
mod amqp;
#[path = "support/amqp_exchange_helpers.rs"]
mod helpers;

use std::collections::BTreeSet;

use amqp::{AmqpBroker, within};
use helpers::*;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, ExchangeKind};

async fn declare(ch: &Channel, name: &str, kind: &str, arguments: FieldTable) -> lapin::Result<()> {
    let options = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    let kind = ExchangeKind::Custom(kind.into());
    within(ch.exchange_declare(name.into(), kind, options, arguments)).await
}

/// The bodies each of `queues` holds (taken).
async fn bodies(ch: &Channel, queues: &[&str]) -> Vec<BTreeSet<String>> {
    let mut all = Vec::new();
    for queue in queues {
        let taken = drain(ch, queue).await.into_iter();
        all.push(taken.map(|b| String::from_utf8(b).unwrap()).collect());
    }
    all
}

/// What each body (`{key}/{n}`) was sent for: its key, or its user.
fn senders(bodies: &BTreeSet<String>) -> BTreeSet<String> {
    let before_slash = |b: &String| b.split('/').next().unwrap().to_owned();
    bodies.iter().map(before_slash).collect()
}

#[tokio::test]
async fn x_consistent_hash_keeps_each_key_on_one_queue_by_weight() {
    let broker = AmqpBroker::start().await;
    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    declare(&ch, "shards", "x-consistent-hash", no_args())
        .await
        .unwrap();
    // Binding keys are weights, as in RabbitMQ.
    declare_bound_queue(&ch, "shard-1", "shards", "1").await;
    declare_bound_queue(&ch, "shard-2", "shards", "2").await;
    for round in 0..2 {
        for key in 0..20 {
            let body = format!("customer-{key}/{round}");
            let key = format!("customer-{key}");
            publish_confirmed(
                &ch,
                "shards",
                &key,
                body.as_bytes(),
                BasicProperties::default(),
            )
            .await;
        }
    }
    let [one, two]: [BTreeSet<String>; 2] = bodies(&ch, &["shard-1", "shard-2"])
        .await
        .try_into()
        .unwrap();
    assert_eq!(
        one.len() + two.len(),
        40,
        "each message to exactly one queue"
    );
    assert!(senders(&one).is_disjoint(&senders(&two)), "{one:?} {two:?}");
    assert!(!one.is_empty() && !two.is_empty(), "both shards get keys");
    // The JSON side sees the bundled plugin's type.
    let json = broker.json_client().await;
    let info = exchange_info(&json, "shards").await.unwrap();
    assert_eq!(info.kind, "consistent-hash");
    // A weight that is not a number is refused, as RabbitMQ refuses it.
    let bad = within(ch.queue_bind(
        "shard-1".into(),
        "shards".into(),
        "heavy".into(),
        QueueBindOptions::default(),
        no_args(),
    ))
    .await;
    assert!(bad.is_err());
}

#[tokio::test]
async fn x_consistent_hash_with_hash_header_hashes_that_header() {
    let broker = AmqpBroker::start().await;
    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    let mut arguments = FieldTable::default();
    arguments.insert("hash-header".into(), AMQPValue::LongString("user".into()));
    declare(&ch, "by-user", "x-consistent-hash", arguments)
        .await
        .unwrap();
    declare_bound_queue(&ch, "users-a", "by-user", "1").await;
    declare_bound_queue(&ch, "users-b", "by-user", "1").await;
    for user in ["alice", "bob", "carol", "dave", "erin", "frank"] {
        for n in 0..3 {
            let mut headers = FieldTable::default();
            headers.insert("user".into(), AMQPValue::LongString(user.into()));
            let properties = BasicProperties::default().with_headers(headers);
            let body = format!("{user}/{n}");
            // Routing keys differ: the header decides.
            publish_confirmed(&ch, "by-user", &body, body.as_bytes(), properties).await;
        }
    }
    let [a, b]: [BTreeSet<String>; 2] = bodies(&ch, &["users-a", "users-b"])
        .await
        .try_into()
        .unwrap();
    assert_eq!(a.len() + b.len(), 18);
    assert!(senders(&a).is_disjoint(&senders(&b)), "{a:?} {b:?}");

    // RabbitMQ's `hash-property` has no counterpart here: refused, not ignored.
    let ch = conn.create_channel().await.unwrap();
    let mut arguments = FieldTable::default();
    arguments.insert(
        "hash-property".into(),
        AMQPValue::LongString("message_id".into()),
    );
    let refused = declare(&ch, "by-id", "x-consistent-hash", arguments)
        .await
        .unwrap_err();
    assert_eq!(amqp::reply_code(&refused), Some(406));
}

#[tokio::test]
async fn x_random_delivers_each_message_to_one_of_its_queues() {
    let broker = AmqpBroker::start().await;
    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    declare(&ch, "spread", "x-random", no_args()).await.unwrap();
    declare_bound_queue(&ch, "spread-1", "spread", "").await;
    declare_bound_queue(&ch, "spread-2", "spread", "").await;
    for n in 0..30 {
        let body = format!("m{n}");
        publish_confirmed(
            &ch,
            "spread",
            "",
            body.as_bytes(),
            BasicProperties::default(),
        )
        .await;
    }
    let [one, two]: [BTreeSet<String>; 2] = bodies(&ch, &["spread-1", "spread-2"])
        .await
        .try_into()
        .unwrap();
    assert_eq!(one.len() + two.len(), 30);
    assert!(one.is_disjoint(&two));
    let json = broker.json_client().await;
    assert_eq!(exchange_info(&json, "spread").await.unwrap().kind, "random");
}
