//! `broker definitions import`: a RabbitMQ definitions file (as RabbitMQ 3.12 exports
//! it, `fixtures/rabbitmq-definitions.json`) loaded into a running broker by the real
//! binary, then checked by routing messages through what it declared.

mod common;

use broker::{Client, Message};
use common::{BrokerProcess, run_cli};

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/fixtures/rabbitmq-definitions.json"
);

/// `url` in vhost `vhost`.
fn in_vhost(url: &str, vhost: &str) -> String {
    broker::client::credentials::with_vhost(url, vhost)
}

/// Queue `name`'s ready count.
async fn ready(client: &Client, name: &str) -> u64 {
    client.queue_info(name).await.unwrap().ready
}

#[tokio::test]
async fn a_rabbitmq_export_is_declared_and_routes_as_it_did() {
    let dir = tempfile::tempdir().unwrap();
    let process = BrokerProcess::spawn(dir.path());
    let url = process.url.clone();
    let import = || {
        let url = url.clone();
        tokio::task::spawn_blocking(move || run_cli(&["definitions", "import", FIXTURE], &url))
    };

    let (ok, out, err) = import().await.unwrap();
    // The stream queue has no counterpart here: it fails, named; the rest is declared.
    assert!(!ok, "{out}");
    assert!(
        err.contains("queue clicks in /") && err.contains("stream"),
        "{err}"
    );
    assert_eq!(err.matches("failed:").count(), 1, "{err}");
    assert!(
        out.contains(
            "declared: vhosts 1, permissions 3, exchanges 4, queues 4, bindings 5, users 2"
        ),
        "{out}"
    );
    assert!(out.contains("skipped: policies 1 (audit-ttl"), "{out}");

    let shop = Client::connect(&in_vhost(&url, "shop")).await.unwrap();
    let exchanges = shop.list_exchanges().await.unwrap().exchanges;
    let kind = |name: &str| {
        let e = exchanges.iter().find(|e| e.exchange == name).expect(name);
        (e.kind.clone(), e.durable, e.internal)
    };
    assert_eq!(kind("events"), ("topic".into(), true, false));
    assert_eq!(kind("dlx"), ("fanout".into(), true, true));
    let orders = shop.queue_info("orders").await.unwrap();
    assert!(orders.durable);
    assert_eq!(orders.arguments["dead_letter_exchange"], "dlx");
    assert_eq!(
        orders.arguments["max_deliveries"], 6,
        "x-delivery-limit 5 is 6 deliveries"
    );

    // A topic binding, an exchange-to-exchange binding and the alternate exchange.
    shop.confirm_select().await.unwrap();
    for key in ["order.1", "audit.login", "something.else"] {
        let mut message = Message::text("", "x");
        message.exchange = "events".into();
        message.routing_key = key.into();
        shop.publish(message, false).await.unwrap();
    }
    assert_eq!(ready(&shop, "orders").await, 1);
    assert_eq!(
        ready(&shop, "unrouted.catch").await,
        2,
        "exchange binding + alternate"
    );

    // The default vhost: RabbitMQ's arguments as the core's, a delayed exchange.
    let root = Client::connect(&url).await.unwrap();
    let audit = root.queue_info("audit").await.unwrap();
    assert_eq!(audit.arguments["message_ttl"], 60000);
    assert_eq!(audit.arguments["max_length"], 1000);
    let later = root.list_exchanges().await.unwrap().exchanges;
    let later = later.iter().find(|e| e.exchange == "later").unwrap();
    assert_eq!(later.kind, "direct");
    assert_eq!(later.arguments["delayed"], true);

    // Importing again declares the same things again (the vhost exists now), and changes
    // nothing.
    let (ok, again, err) = import().await.unwrap();
    assert!(!ok);
    assert_eq!(err.matches("failed:").count(), 1, "{err}");
    assert!(
        again.contains("declared: permissions 3, exchanges 4, queues 4, bindings 5, users 2"),
        "{again}"
    );
    assert_eq!(ready(&shop, "orders").await, 1);
}

#[tokio::test]
async fn users_keep_their_rabbitmq_passwords_and_permissions() {
    let dir = tempfile::tempdir().unwrap();
    let process = BrokerProcess::spawn(dir.path());
    let url = process.url.clone();
    let cli_url = url.clone();
    let imported =
        tokio::task::spawn_blocking(move || run_cli(&["definitions", "import", FIXTURE], &cli_url));
    let (_, out, _) = imported.await.unwrap();
    assert!(out.contains("users 2"), "{out}");

    // The password the fixture's hash was made from (RabbitMQ's salted SHA-256).
    let login = |user: &str, password: &str| {
        let with_user = url.replacen("ws://", &format!("ws://{user}:{password}@"), 1);
        in_vhost(&with_user, "shop")
    };
    let service = Client::connect(&login("orders-svc", "orders-pass"))
        .await
        .unwrap();
    // Its permissions came along: it may read `orders`, not configure `audit...`.
    service.queue_info("orders").await.unwrap();
    let refused = service.purge_queue("unrouted.catch").await.unwrap_err();
    assert!(refused.to_string().contains("access_refused"), "{refused}");
    // A wrong password is refused (at the upgrade, or at the first request).
    match Client::connect(&login("orders-svc", "wrong")).await {
        Err(_) => {}
        Ok(wrong) => assert!(wrong.queue_info("orders").await.is_err()),
    }
    // `guest` was replaced by its RabbitMQ record, with the same password and tags.
    let users = service.list_users().await;
    assert!(users.is_err(), "orders-svc is no administrator");
    let guest = Client::connect(&login("guest", "guest")).await.unwrap();
    let listed = guest.list_users().await.unwrap();
    let tags = |name: &str| listed.iter().find(|u| u.user == name).unwrap().tags.clone();
    assert_eq!(tags("guest"), [broker::auth::Tag::Administrator]);
    assert_eq!(tags("orders-svc"), [broker::auth::Tag::Management]);
}

/// What a vhost holds, as listings show it, for comparing two brokers.
async fn topology(url: &str, vhost: &str) -> serde_json::Value {
    let client = Client::connect(&in_vhost(url, vhost)).await.unwrap();
    let mut queues: Vec<_> = client.list_queues().await.unwrap();
    queues.sort_by(|a, b| a.queue.cmp(&b.queue));
    let queues: Vec<_> = queues
        .iter()
        .map(|q| {
            (
                q.queue.clone(),
                q.durable,
                q.auto_delete,
                q.arguments.clone(),
            )
        })
        .collect();
    let mut exchanges = client.list_exchanges().await.unwrap().exchanges;
    exchanges.sort_by(|a, b| a.exchange.cmp(&b.exchange));
    let exchanges: Vec<_> = exchanges
        .iter()
        .map(|e| {
            (
                e.exchange.clone(),
                e.kind.clone(),
                e.durable,
                e.internal,
                e.arguments.clone(),
            )
        })
        .collect();
    let bindings = client.list_bindings().await.unwrap();
    let exchange_bindings = client.list_exchange_bindings().await.unwrap();
    serde_json::json!({
        "queues": queues,
        "exchanges": exchanges,
        "bindings": bindings,
        "exchange_bindings": exchange_bindings,
    })
}

#[tokio::test]
async fn an_export_imports_into_another_broker_as_the_same_topology() {
    let (first_dir, second_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let first = BrokerProcess::spawn(first_dir.path());
    let second = BrokerProcess::spawn(second_dir.path());
    let exported = first_dir.path().join("export.json");
    let (url, file) = (first.url.clone(), exported.clone());
    let (ok, _, err) = tokio::task::spawn_blocking(move || {
        let _ = run_cli(&["definitions", "import", FIXTURE], &url);
        // A queue declared as this broker's own protocol does, with its `.dlq` default.
        let _ = run_cli(&["declare", "queue", "jobs", "--durable"], &url);
        run_cli(&["definitions", "export", file.to_str().unwrap()], &url)
    })
    .await
    .unwrap();
    assert!(ok, "{err}");
    assert!(err.contains("exported: vhosts 2"), "{err}");

    // RabbitMQ's names in the file: a RabbitMQ broker could import it too.
    let text = std::fs::read_to_string(&exported).unwrap();
    let file: serde_json::Value = serde_json::from_str(&text).unwrap();
    let queue = |name: &str| {
        let queues = file["queues"].as_array().unwrap();
        queues.iter().find(|q| q["name"] == name).unwrap().clone()
    };
    assert_eq!(queue("audit")["arguments"]["x-message-ttl"], 60000);
    assert_eq!(queue("orders")["arguments"]["x-delivery-limit"], 5);
    let later = file["exchanges"].as_array().unwrap();
    let later = later.iter().find(|e| e["name"] == "later").unwrap();
    assert_eq!(later["type"], "x-delayed-message");
    assert_eq!(later["arguments"]["x-delayed-type"], "direct");

    // Into a second broker (its users are added there: an export has none).
    let admin = Client::connect(&second.url).await.unwrap();
    admin.add_user("orders-svc", "anything", &[]).await.unwrap();
    let (url, file) = (second.url.clone(), exported.clone());
    let (ok, out, err) = tokio::task::spawn_blocking(move || {
        run_cli(&["definitions", "import", file.to_str().unwrap()], &url)
    })
    .await
    .unwrap();
    assert!(ok, "{out}{err}");
    for vhost in ["/", "shop"] {
        assert_eq!(
            topology(&first.url, vhost).await,
            topology(&second.url, vhost).await,
            "vhost {vhost}"
        );
    }
}
