//! Per-user `max_queues`, end to end: set with the CLI, enforced on the JSON protocol
//! (`access_refused`) for queues the user's connections declared, freed by deleting
//! them, and still in force — limit and count — after a restart; HTTP API declares count
//! for the user making them.

mod common;

use broker::protocol::ErrorCode;
use broker::{Client, ClientError, QueueOptions};
use common::{TestBroker, WAIT, all_permissions, run_cli};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

/// A JSON-protocol connection logged in as `user` (HTTP Basic on the upgrade).
async fn connect_as(
    broker: &TestBroker,
    user: &str,
    password: &str,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    let mut request = broker.url().into_client_request().unwrap();
    let basic = broker::client::credentials::basic_header(user, password);
    request
        .headers_mut()
        .insert("Authorization", basic.parse().unwrap());
    tokio_tungstenite::connect_async(request).await.unwrap().0
}

/// Sends one request frame and returns the reply to it.
async fn call<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>, request: Value) -> Value
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let id = request["id"].clone();
    ws.send(WsMessage::text(request.to_string())).await.unwrap();
    loop {
        let frame = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a reply in time")
            .expect("the connection stays open")
            .unwrap();
        if let WsMessage::Text(text) = frame {
            let reply: Value = serde_json::from_str(&text).unwrap();
            if reply["id"] == id {
                return reply;
            }
        }
    }
}

fn declare(id: u64, queue: &str) -> Value {
    json!({"id": id, "op": "declare_queue", "queue": queue, "durable": true})
}

fn refused_for_limit(result: Result<broker::protocol::QueueInfo, ClientError>) {
    match result {
        Err(ClientError::Server { code, message }) => {
            assert_eq!(code, ErrorCode::AccessRefused, "{message}");
            assert!(message.contains("limit of 2 queues"), "{message}");
        }
        other => panic!("expected access_refused, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn max_queues_counts_the_users_own_queues_and_survives_a_restart() {
    let mut b = TestBroker::start().await;
    let admin = b.client().await;
    admin.add_user("app", "pw", &[]).await.unwrap();
    admin
        .set_permissions(all_permissions("app", "/"))
        .await
        .unwrap();
    let (ok, out, err) = run_cli(&["user", "limits", "app", "--max-queues", "2"], &b.url());
    assert!(ok, "{err}");
    assert!(out.contains("user app may have 2 queues"), "{out}");
    let (ok, out, err) = run_cli(&["user", "list"], &b.url());
    assert!(ok, "{err}");
    assert!(out.contains("(max 2 queues)"), "{out}");

    // Two queues: declared. A third: refused on the wire, with the reason.
    let mut app = connect_as(&b, "app", "pw").await;
    assert_eq!(call(&mut app, declare(1, "a")).await["type"], "ok");
    assert_eq!(call(&mut app, declare(2, "b")).await["type"], "ok");
    let refused = call(&mut app, declare(3, "c")).await;
    assert_eq!(refused["type"], "error", "{refused}");
    assert_eq!(refused["code"], "access_refused", "{refused}");
    let message = refused["message"].as_str().unwrap();
    assert_eq!(message, "user `app` has reached its limit of 2 queues");
    // Declaring one it has again is no new queue; the connection carries on.
    assert_eq!(call(&mut app, declare(4, "a")).await["type"], "ok");
    // Other users' queues do not count against it.
    admin
        .declare_queue("admins", QueueOptions::durable())
        .await
        .unwrap();

    // Deleting one of its own frees a place.
    let deleted = call(
        &mut app,
        json!({"id": 5, "op": "delete_queue", "queue": "b"}),
    )
    .await;
    assert_eq!(deleted["type"], "ok", "{deleted}");
    assert_eq!(call(&mut app, declare(6, "c")).await["type"], "ok");
    drop(app);

    // After a restart the limit is still set and its queues still count.
    b.restart().await;
    let admin = b.client().await;
    let users = admin.list_users().await.unwrap();
    let listed = users.iter().find(|u| u.user == "app").unwrap();
    assert_eq!(listed.max_queues, Some(2));
    let url = b.url();
    let rest = url.strip_prefix("ws://").unwrap();
    let userinfo = broker::client::credentials::userinfo("app", "pw");
    let app = Client::connect(&format!("ws://{userinfo}{rest}"))
        .await
        .unwrap();
    refused_for_limit(app.declare_queue("d", QueueOptions::durable()).await);
    // Lifting the limit lifts it.
    admin
        .set_user_limits("app", &Default::default())
        .await
        .unwrap();
    app.declare_queue("d", QueueOptions::durable())
        .await
        .unwrap();
}

#[tokio::test]
async fn queues_declared_through_the_http_api_count_for_the_user_asking() {
    let b = common::HttpBroker::start().await;
    let admin = b.client().await;
    admin
        .add_user("ops", "pw", &[broker::auth::Tag::Management])
        .await
        .unwrap();
    admin
        .set_permissions(all_permissions("ops", "/"))
        .await
        .unwrap();
    let one = broker::auth::UserLimits {
        max_connections: None,
        max_queues: Some(1),
    };
    admin.set_user_limits("ops", &one).await.unwrap();
    let ops = broker::client::credentials::basic_header("ops", "pw");
    let as_ops = [("Authorization", ops.as_str())];
    let put =
        |path: &'static str| common::http_with_headers(b.addr(), "PUT", path, Some("{}"), &as_ops);
    assert_eq!(put("/api/queues/first").await.status, 200);
    let refused = put("/api/queues/second").await;
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert_eq!(refused.json()["error"]["code"], "access_refused");
    assert_eq!(
        refused.json()["error"]["message"],
        "user `ops` has reached its limit of 1 queues"
    );
    // The same user over the protocol: the queue from HTTP counts there too.
    let url = b.broker.url();
    let rest = url.strip_prefix("ws://").unwrap();
    let userinfo = broker::client::credentials::userinfo("ops", "pw");
    let client = Client::connect(&format!("ws://{userinfo}{rest}"))
        .await
        .unwrap();
    let result = client.declare_queue("third", QueueOptions::durable()).await;
    match result {
        Err(ClientError::Server { code, .. }) => assert_eq!(code, ErrorCode::AccessRefused),
        other => panic!("expected access_refused, got {other:?}"),
    }
    // Another user's HTTP requests are not limited by it.
    let guest = common::http(b.addr(), "PUT", "/api/queues/by-guest", Some("{}")).await;
    assert_eq!(guest.status, 200);
    // An exclusive queue has no connection to belong to over HTTP.
    let body = Some(r#"{"exclusive": true}"#);
    let exclusive = common::http(b.addr(), "PUT", "/api/queues/mine", body).await;
    assert_eq!(exclusive.status, 400, "{}", exclusive.body);
}
