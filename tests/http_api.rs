//! The HTTP API as a producer, as docs/http.md shows it with curl: declare and delete
//! queues and exchanges, bind and unbind, publish (and learn whether it was routed), all
//! checked against the caller's permissions.

mod common;

use common::{HttpBroker, body, http, http_with_headers, next};
use serde_json::json;

#[tokio::test]
async fn curl_declares_binds_publishes_and_deletes() {
    let b = HttpBroker::start().await;
    let addr = b.addr();
    let ok = |reply: &common::HttpReply| assert_eq!(reply.status, 200, "{}", reply.body);

    let queue = http(
        addr,
        "PUT",
        "/api/queues/orders",
        Some(r#"{"durable": true}"#),
    )
    .await;
    ok(&queue);
    assert_eq!(queue.json()["queue"], "orders");
    let exchange = r#"{"type": "topic", "durable": true}"#;
    ok(&http(addr, "PUT", "/api/exchanges/events", Some(exchange)).await);
    let binding = r#"{"exchange": "events", "queue": "orders", "key": "order.*"}"#;
    ok(&http(addr, "POST", "/api/bindings", Some(binding)).await);

    let message =
        r#"{"routing_key": "order.created", "body": "hello", "properties": {"persistent": true}}"#;
    let published = http(addr, "POST", "/api/exchanges/events/publish", Some(message)).await;
    ok(&published);
    assert_eq!(published.json(), json!({"routed": true}));
    let stray = r#"{"routing_key": "user.created", "body": "nobody"}"#;
    let published = http(addr, "POST", "/api/exchanges/events/publish", Some(stray)).await;
    assert_eq!(published.json(), json!({"routed": false}));
    // The default exchange is `amq.default` in paths, as in RabbitMQ's API.
    let direct = r#"{"routing_key": "orders", "body": "direct"}"#;
    let published = http(
        addr,
        "POST",
        "/api/exchanges/amq.default/publish",
        Some(direct),
    )
    .await;
    assert_eq!(published.json(), json!({"routed": true}));

    let client = b.client().await;
    let mut sub = client.consume("orders", 10).await.unwrap();
    let first = next(&mut sub).await;
    assert_eq!(body(&first), "hello");
    assert!(first.message.properties.persistent);
    assert_eq!(first.message.routing_key, "order.created");
    assert_eq!(body(&next(&mut sub).await), "direct");
    client.cancel(&sub.consumer_tag).await.unwrap();

    ok(&http(addr, "DELETE", "/api/bindings", Some(binding)).await);
    let published = http(addr, "POST", "/api/exchanges/events/publish", Some(message)).await;
    assert_eq!(published.json(), json!({"routed": false}), "unbound");

    let refused = http(addr, "DELETE", "/api/queues/orders?if_empty=true", None).await;
    assert_eq!(refused.status, 409, "{}", refused.body);
    drop(client); // its two unacked messages go back to the queue
    let deleted = http(addr, "DELETE", "/api/queues/orders", None).await;
    ok(&deleted);
    ok(&http(addr, "DELETE", "/api/exchanges/events", None).await);
    let gone = http(addr, "POST", "/api/exchanges/events/publish", Some(message)).await;
    assert_eq!(gone.status, 404);
    assert_eq!(gone.json()["error"]["code"], "exchange_not_found");
    let bad = http(
        addr,
        "PUT",
        "/api/queues/q",
        Some(r#"{"arguments": {"max_length": -1}}"#),
    )
    .await;
    assert_eq!(bad.status, 400, "{}", bad.body);
    let mandatory = r#"{"routing_key": "q", "body": "x", "mandatory": true}"#;
    let bad = http(
        addr,
        "POST",
        "/api/exchanges/amq.default/publish",
        Some(mandatory),
    )
    .await;
    assert_eq!(bad.status, 400, "{}", bad.body);
}

#[tokio::test]
async fn the_write_endpoints_check_permissions() {
    let b = HttpBroker::start().await;
    let admin = b.client().await;
    admin
        .declare_queue("orders", broker::QueueOptions::durable())
        .await
        .unwrap();
    admin
        .add_user("ops", "pw", &[broker::auth::Tag::Management])
        .await
        .unwrap();
    admin
        .set_permissions(broker::protocol::SetPermissions {
            user: "ops".into(),
            vhost: "/".into(),
            configure: "^ops-".into(),
            write: "^amq\\.default$".into(),
            read: String::new(),
            plugin: false,
        })
        .await
        .unwrap();
    let ops = broker::client::credentials::basic_header("ops", "pw");
    let as_ops = [("Authorization", ops.as_str())];
    let addr = b.addr();
    let send = |method: &'static str, path: &'static str, body: Option<&'static str>| {
        http_with_headers(addr, method, path, body, &as_ops)
    };
    assert_eq!(
        send("PUT", "/api/queues/ops-jobs", Some("{}")).await.status,
        200
    );
    let refused = send("PUT", "/api/queues/jobs", Some("{}")).await;
    assert_eq!(refused.status, 403);
    assert_eq!(refused.json()["error"]["code"], "access_refused");
    assert_eq!(send("DELETE", "/api/queues/orders", None).await.status, 403);
    let message = r#"{"routing_key": "orders", "body": "x"}"#;
    let published = send("POST", "/api/exchanges/amq.default/publish", Some(message)).await;
    assert_eq!(published.json(), json!({"routed": true}));
    admin
        .declare_exchange("events", "fanout", false, Default::default())
        .await
        .unwrap();
    let refused = send("POST", "/api/exchanges/events/publish", Some(message)).await;
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert_eq!(admin.queue_info("orders").await.unwrap().ready, 1);
}

/// The vhosts, for the page's vhost list: administrators may list them, no one else.
#[tokio::test]
async fn administrators_list_the_vhosts() {
    let b = HttpBroker::start().await;
    let admin = b.client().await;
    admin.add_vhost("prod").await.unwrap();
    let listed = b.get("/api/vhosts").await;
    assert_eq!(listed.status, 200, "{}", listed.body);
    assert_eq!(
        listed.json(),
        json!({"vhosts": [{"vhost": "/"}, {"vhost": "prod"}]})
    );
    // The page offers them in its header.
    assert!(b.get("/").await.body.contains(r#"<select id="vhost">"#));
    admin
        .add_user("ops", "pw", &[broker::auth::Tag::Management])
        .await
        .unwrap();
    admin
        .set_permissions(common::all_permissions("ops", "/"))
        .await
        .unwrap();
    let ops = broker::client::credentials::basic_header("ops", "pw");
    let refused = http_with_headers(
        b.addr(),
        "GET",
        "/api/vhosts",
        None,
        &[("Authorization", &ops)],
    )
    .await;
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert_eq!(refused.json()["error"]["code"], "access_refused");
}

/// `POST /api/queues/{q}/get`: takes messages in order and puts them back (the default),
/// or acks them with `"requeue": false`; bad fields get 400.
#[tokio::test]
async fn get_takes_messages_and_requeues_or_acks_them() {
    let b = HttpBroker::start().await;
    let addr = b.addr();
    let ok = |reply: &common::HttpReply| assert_eq!(reply.status, 200, "{}", reply.body);
    ok(&http(
        addr,
        "PUT",
        "/api/queues/jobs",
        Some(r#"{"durable": true}"#),
    )
    .await);
    for i in 0..3 {
        let message = format!(r#"{{"routing_key": "jobs", "body": "job {i}"}}"#);
        ok(&http(
            addr,
            "POST",
            "/api/exchanges/amq.default/publish",
            Some(&message),
        )
        .await);
    }
    let bodies = |reply: &common::HttpReply| -> Vec<String> {
        reply.json()["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["message"]["body"].as_str().unwrap().to_owned())
            .collect()
    };

    let peeked = http(
        addr,
        "POST",
        "/api/queues/jobs/get",
        Some(r#"{"count": 2}"#),
    )
    .await;
    ok(&peeked);
    assert_eq!(bodies(&peeked), ["job 0", "job 1"]);
    let ready = |q: serde_json::Value| q["ready"].as_u64().unwrap();
    let info = http(addr, "GET", "/api/queues/jobs", None).await;
    assert_eq!(ready(info.json()), 3, "requeued: {}", info.body);

    let taken = http(
        addr,
        "POST",
        "/api/queues/jobs/get",
        Some(r#"{"count": 10, "requeue": false}"#),
    )
    .await;
    ok(&taken);
    assert_eq!(bodies(&taken), ["job 0", "job 1", "job 2"]);
    assert_eq!(taken.json()["message_count"], 0);
    let info = http(addr, "GET", "/api/queues/jobs", None).await;
    assert_eq!(
        ready(info.json()) + info.json()["unacked"].as_u64().unwrap(),
        0
    );

    let empty = http(addr, "POST", "/api/queues/jobs/get", None).await;
    ok(&empty);
    assert_eq!(empty.json()["messages"], json!([]));
    for bad in [
        r#"{"count": 0}"#,
        r#"{"requeue": "yes"}"#,
        r#"{"ackmode": "x"}"#,
    ] {
        let refused = http(addr, "POST", "/api/queues/jobs/get", Some(bad)).await;
        assert_eq!(refused.status, 400, "{bad}: {}", refused.body);
    }
    let missing = http(addr, "POST", "/api/queues/nowhere/get", None).await;
    assert_eq!(missing.status, 404, "{}", missing.body);
}
