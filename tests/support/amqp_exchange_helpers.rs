//! Helpers of the AMQP exchange tests (tests/amqp_exchanges.rs and
//! tests/amqp_exchange_bindings.rs): lapin declares, binds, confirmed publishes, drains.
#![allow(dead_code)]

use crate::amqp::{self, AmqpBroker, within};
use broker::Message;
use broker::protocol::ExchangeInfo;
use futures_util::StreamExt as _;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ExchangeKind};

pub fn message(exchange: &str, key: &str, body: &str) -> Message {
    Message {
        exchange: exchange.into(),
        ..Message::text(key, body)
    }
}

pub fn no_args() -> FieldTable {
    FieldTable::default()
}

pub fn durable_queue() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..Default::default()
    }
}

pub async fn stomp_and_amqp_broker() -> AmqpBroker {
    AmqpBroker::start_with(|c| c.stomp = Some("127.0.0.1:0".parse().unwrap())).await
}

/// The code and text of the next channel or connection exception on `events`.
pub async fn next_error(
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

pub async fn declare_exchange(
    ch: &Channel,
    name: &str,
    kind: ExchangeKind,
    options: ExchangeDeclareOptions,
) {
    within(ch.exchange_declare(name.into(), kind, options, no_args()))
        .await
        .unwrap_or_else(|e| panic!("declare {name}: {e:?}"));
}

pub async fn declare_bound_queue(ch: &Channel, queue: &str, exchange: &str, key: &str) {
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

pub async fn bind_exchange(ch: &Channel, destination: &str, source: &str, key: &str) {
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
pub async fn publish_confirmed(
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

pub async fn confirm_channel(conn: &Connection) -> Channel {
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    ch
}

/// Every message waiting in `queue`, taken with `basic.get` (bodies, in order).
pub async fn drain(ch: &Channel, queue: &str) -> Vec<Vec<u8>> {
    let mut bodies = Vec::new();
    while let Some(got) = within(ch.basic_get(queue.into(), BasicGetOptions { no_ack: true }))
        .await
        .unwrap()
    {
        bodies.push(got.delivery.data);
    }
    bodies
}

pub async fn exchange_info(json: &broker::Client, name: &str) -> Option<ExchangeInfo> {
    let list = json.list_exchanges().await.unwrap();
    list.exchanges.into_iter().find(|e| e.exchange == name)
}

/// Whether exchange `name` exists, by a passive declare on a fresh channel (404 if not).
pub async fn exchange_exists(conn: &Connection, name: &str) -> bool {
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
