//! AMQP clients under the same virtual hosts and permissions as JSON ones: the vhost of
//! `connection.open` is a namespace, a user may open only vhosts where it has
//! permissions, and each method is checked against them (403 otherwise).

#[path = "support/amqp.rs"]
mod amqp;

use amqp::{AmqpBroker, next_delivery, reply_code, within};
use broker::protocol::SetPermissions;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};

fn permissions(user: &str, vhost: &str, read: &str) -> SetPermissions {
    SetPermissions {
        user: user.into(),
        vhost: vhost.into(),
        configure: if read.is_empty() { ".*" } else { "" }.into(),
        write: if read.is_empty() { ".*" } else { "" }.into(),
        read: if read.is_empty() { ".*" } else { read }.into(),
        plugin: false,
    }
}

async fn connect(broker: &AmqpBroker, user: &str, vhost: &str) -> Result<Connection, lapin::Error> {
    let uri = format!("amqp://{user}:pw@{}/{vhost}", broker.amqp_addr());
    within(Connection::connect(&uri, ConnectionProperties::default())).await
}

#[tokio::test]
async fn amqp_works_in_its_vhost_under_its_permissions() {
    let broker = AmqpBroker::start().await;
    let admin = broker.json_client().await;
    admin.add_vhost("prod").await.unwrap();
    for user in ["app", "reader"] {
        admin.add_user(user, "pw", &[]).await.unwrap();
    }
    admin
        .set_permissions(permissions("app", "prod", ""))
        .await
        .unwrap();
    admin
        .set_permissions(permissions("reader", "prod", "^orders$"))
        .await
        .unwrap();

    // `app` declares and publishes in prod, with confirms.
    let app = connect(&broker, "app", "prod").await.unwrap();
    let channel = app.create_channel().await.unwrap();
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    for queue in ["orders", "payroll"] {
        channel
            .queue_declare(queue.into(), durable, FieldTable::default())
            .await
            .unwrap();
    }
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let confirm = channel
        .basic_publish(
            "".into(),
            "orders".into(),
            BasicPublishOptions::default(),
            b"order 1",
            BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .unwrap();
    assert!(within(confirm).await.unwrap().is_ack());

    // The default vhost has no such queue: vhosts are namespaces.
    let names: Vec<String> = admin
        .list_queues()
        .await
        .unwrap()
        .into_iter()
        .map(|q| q.queue)
        .collect();
    assert!(!names.contains(&"orders".to_string()), "{names:?}");

    // `reader` may not open `/` (no permissions there), may consume `orders` in prod,
    // and nothing else.
    let refused = connect(&broker, "reader", "%2f")
        .await
        .expect_err("refused");
    assert_eq!(reply_code(&refused), Some(530), "{refused:?}");
    let reader = connect(&broker, "reader", "prod").await.unwrap();
    let channel = reader.create_channel().await.unwrap();
    let mut consumer = channel
        .basic_consume(
            "orders".into(),
            "c".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let delivery = next_delivery(&mut consumer).await;
    assert_eq!(delivery.data, b"order 1");
    assert_eq!(delivery.routing_key.as_str(), "orders");
    delivery.ack(BasicAckOptions::default()).await.unwrap();
    let other = reader.create_channel().await.unwrap();
    let refused = other
        .basic_consume(
            "payroll".into(),
            "c2".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect_err("refused");
    assert_eq!(reply_code(&refused), Some(403), "{refused:?}");
    let declaring = reader.create_channel().await.unwrap();
    let refused = declaring
        .queue_declare("mine".into(), durable, FieldTable::default())
        .await
        .expect_err("refused");
    assert_eq!(reply_code(&refused), Some(403), "{refused:?}");

    // Deleting the vhost closes its AMQP connections: the next method fails.
    admin.delete_vhost("prod").await.unwrap();
    let after = app.create_channel().await;
    let failed = match after {
        Err(e) => Err(e),
        Ok(channel) => channel
            .queue_declare("orders".into(), durable, FieldTable::default())
            .await
            .map(drop),
    };
    assert!(failed.is_err(), "the connection was closed");
}

/// A user's `max_queues` holds over AMQP too: the declare past it closes the channel
/// with 403 and the limit in the reply text; a deleted queue gives its place back.
#[tokio::test]
async fn amqp_declares_count_against_the_users_max_queues() {
    let broker = AmqpBroker::start().await;
    let admin = broker.json_client().await;
    admin.add_user("app", "pw", &[]).await.unwrap();
    admin
        .set_permissions(permissions("app", "/", ""))
        .await
        .unwrap();
    let two = broker::auth::UserLimits {
        max_connections: None,
        max_queues: Some(2),
    };
    admin.set_user_limits("app", &two).await.unwrap();
    let app = connect(&broker, "app", "%2f").await.unwrap();
    let channel = app.create_channel().await.unwrap();
    for queue in ["one", "two"] {
        amqp::declare_queue(&channel, queue).await;
    }
    // Declaring one it has is no new queue.
    channel
        .queue_declare(
            "one".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let refused = channel
        .queue_declare(
            "three".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect_err("refused");
    assert_eq!(reply_code(&refused), Some(403), "{refused:?}");
    assert!(
        refused.to_string().contains("limit of 2 queues"),
        "{refused}"
    );
    // Deleting one gives its place back.
    let channel = app.create_channel().await.unwrap();
    channel
        .queue_delete("two".into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    channel
        .queue_declare(
            "three".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
}
