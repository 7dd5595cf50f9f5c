//! Virtual hosts and permissions, end to end: a user may do in a vhost exactly what its
//! permissions allow (`access_refused` otherwise), vhosts are separate namespaces, and a
//! data dir written before vhosts existed opens with everything in vhost `/`.

mod common;

use std::path::Path;

use broker::protocol::{ErrorCode, SetPermissions};
use broker::{Client, ClientError, QueueOptions};
use common::{TestBroker, WAIT, body, next, persistent, queue_names, run_cli};

/// `ws://user:password@host:port/vhost` for the test broker.
fn url_as(broker: &TestBroker, user: &str, password: &str, vhost: &str) -> String {
    let url = broker.url();
    let rest = url.strip_prefix("ws://").unwrap();
    let with_user = format!(
        "ws://{}{rest}",
        broker::client::credentials::userinfo(user, password)
    );
    broker::client::credentials::with_vhost(&with_user, vhost)
}

fn permissions(
    user: &str,
    vhost: &str,
    configure: &str,
    write: &str,
    read: &str,
) -> SetPermissions {
    SetPermissions {
        user: user.into(),
        vhost: vhost.into(),
        configure: configure.into(),
        write: write.into(),
        read: read.into(),
        plugin: false,
    }
}

fn to_exchange(mut message: broker::Message, exchange: &str) -> broker::Message {
    message.exchange = exchange.into();
    message
}

fn refused<T: std::fmt::Debug>(result: Result<T, ClientError>) -> String {
    match result {
        Err(ClientError::Server { code, message }) => {
            assert_eq!(code, ErrorCode::AccessRefused, "{message}");
            message
        }
        other => panic!("expected access_refused, got {other:?}"),
    }
}

#[tokio::test]
async fn a_user_reading_one_queue_can_consume_it_and_do_nothing_else() {
    let b = TestBroker::start().await;
    let admin = b.client().await;
    for queue in ["orders", "payments"] {
        admin
            .declare_queue(queue, QueueOptions::durable())
            .await
            .unwrap();
    }
    admin.confirm_select().await.unwrap();
    admin
        .publish(persistent("orders", "order 1"), false)
        .await
        .unwrap();
    admin.add_user("reader", "pw", &[]).await.unwrap();
    admin
        .set_permissions(permissions("reader", "/", "", "", "^orders$"))
        .await
        .unwrap();

    let reader = Client::connect(&url_as(&b, "reader", "pw", "/"))
        .await
        .unwrap();
    let mut orders = reader.consume("orders", 10).await.unwrap();
    let delivery = next(&mut orders).await;
    assert_eq!(body(&delivery), "order 1");
    reader.ack(delivery.delivery_tag, false).unwrap();
    reader.confirm_select().await.unwrap();

    let message = refused(
        reader
            .publish(broker::Message::text("orders", "x"), false)
            .await,
    );
    assert!(message.contains("amq.default"), "{message}");
    refused(reader.consume("payments", 10).await);
    refused(reader.purge_queue("payments").await);
    refused(reader.peek_queue("payments", 10).await);
    refused(
        reader
            .declare_queue("orders", QueueOptions::durable())
            .await,
    );
    refused(reader.delete_queue("orders").await);
    refused(reader.deploy_plugin("mine", b"\0asm").await);
    refused(reader.list_users().await);
    // What it was refused did not happen.
    let payments = admin.queue_info("payments").await.unwrap();
    assert_eq!(payments.consumers, 0);
    assert!(queue_names(&admin).await.contains(&"orders".to_string()));

    // Permissions apply at once to open connections.
    admin
        .set_permissions(permissions("reader", "/", "", "^orders$", "^orders$"))
        .await
        .unwrap();
    refused(
        reader
            .publish(broker::Message::text("orders", "x"), false)
            .await,
    );
    admin
        .set_permissions(permissions("reader", "/", "", "^amq\\.default$", ""))
        .await
        .unwrap();
    reader
        .publish(persistent("orders", "from reader"), false)
        .await
        .unwrap();
    let orders = admin.queue_info("orders").await.unwrap();
    assert_eq!(orders.ready + orders.unacked, 1, "{orders:?}");
}

#[tokio::test]
async fn vhosts_are_separate_namespaces() {
    let b = TestBroker::start().await;
    let admin = b.client().await;
    admin.add_vhost("prod").await.unwrap();
    let mut full = permissions("guest", "prod", ".*", ".*", ".*");
    full.plugin = true;
    admin.set_permissions(full).await.unwrap();
    let prod = Client::connect(&url_as(&b, "guest", "guest", "prod"))
        .await
        .unwrap();

    // The same names in two vhosts are two queues.
    for (client, text) in [(&admin, "in /"), (&prod, "in prod")] {
        client
            .declare_queue("orders", QueueOptions::durable())
            .await
            .unwrap();
        client.confirm_select().await.unwrap();
        client
            .publish(persistent("orders", text), false)
            .await
            .unwrap();
    }
    prod.declare_queue("only-prod", QueueOptions::default())
        .await
        .unwrap();
    assert_eq!(queue_names(&prod).await, ["only-prod", "orders"]);
    assert_eq!(queue_names(&admin).await, ["orders"]);
    let mut sub = prod.consume("orders", 10).await.unwrap();
    let delivery = next(&mut sub).await;
    assert_eq!(body(&delivery), "in prod");
    assert_eq!(&*delivery.queue, "orders", "deliveries use local names");
    assert_eq!(delivery.message.exchange, "");

    // Dead letters stay in their vhost, and their records use its names.
    prod.reject(delivery.delivery_tag, false).unwrap();
    let mut dlq = prod.consume("orders.dlq", 10).await.unwrap();
    let dead = next(&mut dlq).await;
    assert_eq!(body(&dead), "in prod");
    assert_eq!(dead.message.headers["x-death"][0]["queue"], "orders");
    assert!(
        !queue_names(&admin)
            .await
            .contains(&"orders.dlq".to_string())
    );

    // A name cannot reach across vhosts.
    let foreign = format!("prod{}orders", '\u{1f}');
    let err = admin.purge_queue(&foreign).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::InvalidField));
    assert_eq!(admin.queue_info("orders").await.unwrap().ready, 1);

    // Exchanges and bindings too: a topic exchange in prod routes prod's queues only.
    prod.declare_exchange("events", "topic", true, Default::default())
        .await
        .unwrap();
    prod.bind(broker::protocol::Binding {
        exchange: "events".into(),
        queue: "only-prod".into(),
        key: "#".into(),
        arguments: Default::default(),
    })
    .await
    .unwrap();
    let bindings = prod.list_bindings().await.unwrap();
    assert_eq!(
        (bindings[0].exchange.as_str(), bindings[0].queue.as_str()),
        ("events", "only-prod")
    );
    assert!(admin.list_bindings().await.unwrap().is_empty());
    let err = admin
        .publish(
            to_exchange(broker::Message::text("x", "y"), "events"),
            false,
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::ExchangeNotFound), "{err}");
    let connections = prod.list_connections().await.unwrap();
    assert!(
        connections.iter().all(|c| c.vhost == "prod"),
        "{connections:?}"
    );
}

#[tokio::test]
async fn a_vhost_opens_only_to_users_with_permissions_there() {
    let b = TestBroker::start().await;
    let admin = b.client().await;
    admin.add_vhost("prod").await.unwrap();
    admin.add_user("dev", "pw", &[]).await.unwrap();
    admin
        .set_permissions(permissions("dev", "/", ".*", ".*", ".*"))
        .await
        .unwrap();
    let dev = Client::connect(&url_as(&b, "dev", "pw", "/"))
        .await
        .unwrap();
    dev.list_queues().await.unwrap();
    for vhost in ["prod", "nowhere"] {
        let client = Client::connect(&url_as(&b, "dev", "pw", vhost))
            .await
            .unwrap();
        assert!(client.list_queues().await.is_err(), "{vhost} refused");
    }
    // Deleting a vhost removes what was in it and closes its connections.
    admin
        .set_permissions(permissions("dev", "prod", ".*", ".*", ".*"))
        .await
        .unwrap();
    let in_prod = Client::connect(&url_as(&b, "dev", "pw", "prod"))
        .await
        .unwrap();
    in_prod
        .declare_queue("jobs", QueueOptions::durable())
        .await
        .unwrap();
    admin.delete_vhost("prod").await.unwrap();
    let closed = tokio::time::timeout(WAIT, in_prod.list_queues())
        .await
        .expect("an answer in time");
    assert!(closed.is_err(), "{closed:?}");
    assert_eq!(admin.list_vhosts().await.unwrap(), ["/"]);
    let left = admin.list_permissions().await.unwrap();
    assert!(left.iter().all(|p| p.vhost == "/"), "{left:?}");
    admin.add_vhost("prod").await.unwrap();
    let mut full = permissions("guest", "prod", ".*", ".*", ".*");
    full.plugin = true;
    admin.set_permissions(full).await.unwrap();
    let fresh = Client::connect(&url_as(&b, "guest", "guest", "prod"))
        .await
        .unwrap();
    assert!(
        queue_names(&fresh).await.is_empty(),
        "its queues went with it"
    );
}

#[tokio::test]
async fn vhosts_and_permissions_survive_a_restart() {
    let mut b = TestBroker::start().await;
    let admin = b.client().await;
    admin.add_vhost("staging").await.unwrap();
    admin.add_user("ci", "pw", &[]).await.unwrap();
    admin
        .set_permissions(permissions(
            "ci",
            "staging",
            "^ci-",
            "^ci-|^amq\\.default$",
            "^ci-",
        ))
        .await
        .unwrap();
    let ci = Client::connect(&url_as(&b, "ci", "pw", "staging"))
        .await
        .unwrap();
    ci.declare_queue("ci-jobs", QueueOptions::durable())
        .await
        .unwrap();
    ci.confirm_select().await.unwrap();
    ci.publish(persistent("ci-jobs", "build 7"), false)
        .await
        .unwrap();
    drop((ci, admin));
    b.restart().await;
    let admin = b.client().await;
    let mut vhosts = admin.list_vhosts().await.unwrap();
    vhosts.sort();
    assert_eq!(vhosts, ["/", "staging"]);
    let ci = Client::connect(&url_as(&b, "ci", "pw", "staging"))
        .await
        .unwrap();
    refused(ci.declare_queue("jobs", QueueOptions::durable()).await);
    let mut sub = ci.consume("ci-jobs", 1).await.unwrap();
    assert_eq!(body(&next(&mut sub).await), "build 7");
    assert!(!queue_names(&admin).await.contains(&"ci-jobs".to_string()));
}

/// Copies the fixture data dir written by the broker before vhosts existed.
fn copy_fixture(to: &Path) {
    let from = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/data-before-vhosts/broker.redb");
    std::fs::copy(from, to.join("broker.redb")).unwrap();
}

#[tokio::test]
async fn a_data_dir_from_before_vhosts_opens_with_everything_in_the_default_vhost() {
    let dir = tempfile::tempdir().unwrap();
    copy_fixture(dir.path());
    let b = TestBroker {
        broker: Some(common::start_on(dir.path()).await),
        dir,
    };
    let admin = b.client().await;
    assert_eq!(admin.list_vhosts().await.unwrap(), ["/"]);
    let ready: Vec<(String, u64)> = admin
        .list_queues()
        .await
        .unwrap()
        .into_iter()
        .map(|q| (q.queue, q.ready))
        .collect();
    assert_eq!(
        ready,
        [
            ("audit".to_string(), 2),
            ("orders".to_string(), 3),
            ("orders-dlq".to_string(), 0)
        ]
    );
    let exchanges: Vec<String> = admin
        .list_exchanges()
        .await
        .unwrap()
        .exchanges
        .into_iter()
        .map(|e| e.exchange)
        .collect();
    // The predeclared `amq.*` exchanges are created for `/` on an old data dir too.
    assert_eq!(
        exchanges,
        [
            "",
            "amq.direct",
            "amq.fanout",
            "amq.headers",
            "amq.match",
            "amq.topic",
            "dlx",
            "events"
        ]
    );
    assert_eq!(admin.list_bindings().await.unwrap().len(), 2);
    // Users stored before permissions keep what they could do: everything on `/`.
    let alice = Client::connect(&url_as(&b, "alice", "s3cret", "/"))
        .await
        .unwrap();
    let mut orders = alice.consume("orders", 10).await.unwrap();
    assert_eq!(body(&next(&mut orders).await), "hello-orders");
    // Its routing still works: events → audit, and orders' dead letters → dlx → orders-dlq.
    alice.confirm_select().await.unwrap();
    alice
        .publish(
            to_exchange(persistent("order.paid", "paid"), "events"),
            false,
        )
        .await
        .unwrap();
    assert_eq!(admin.queue_info("audit").await.unwrap().ready, 3);
    let first = next(&mut orders).await;
    alice.reject(first.delivery_tag, false).unwrap();
    let mut dlq = admin.consume("orders-dlq", 10).await.unwrap();
    assert_eq!(body(&next(&mut dlq).await), "hello-orders");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_manages_vhosts_and_permissions() {
    let b = TestBroker::start().await;
    let url = b.url();
    let run = |args: &[&str]| {
        let (ok, out, err) = run_cli(args, &url);
        assert!(ok, "{args:?}: {err}");
        out
    };
    run(&["vhost", "add", "prod"]);
    run(&["user", "add", "app", "pw"]);
    run(&[
        "permissions",
        "set",
        "app",
        "",
        "^events$",
        "",
        "--in",
        "prod",
    ]);
    let listed = run(&["permissions", "list"]);
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with("app") && l.contains("prod") && l.contains("\"^events$\"")),
        "{listed}"
    );
    let vhosts = run(&["vhost", "list"]);
    assert_eq!(vhosts.lines().collect::<Vec<_>>(), ["/", "prod"]);
    // The user may not declare in prod: the CLI reports access_refused and fails.
    let (ok, _, err) = run_cli(
        &[
            "declare",
            "queue",
            "q",
            "--user",
            "app",
            "--password",
            "pw",
            "--vhost",
            "prod",
        ],
        &url,
    );
    assert!(!ok);
    assert!(
        err.contains("access_refused") || err.contains("configure access"),
        "{err}"
    );
    run(&["permissions", "clear", "app", "--in", "prod"]);
    run(&["vhost", "delete", "prod"]);
    assert_eq!(run(&["vhost", "list"]).trim(), "/");
}

#[tokio::test]
async fn the_http_api_checks_the_same_permissions() {
    let b = common::HttpBroker::start().await;
    let admin = b.client().await;
    for queue in ["orders", "payroll"] {
        admin
            .declare_queue(queue, QueueOptions::durable())
            .await
            .unwrap();
    }
    admin.confirm_select().await.unwrap();
    admin
        .publish(persistent("payroll", "salaries"), false)
        .await
        .unwrap();
    admin
        .add_user("ops", "pw", &[broker::auth::Tag::Management])
        .await
        .unwrap();
    admin
        .set_permissions(permissions("ops", "/", "", "", "^orders$"))
        .await
        .unwrap();
    let ops = broker::client::credentials::basic_header("ops", "pw");
    let as_ops = [("Authorization", ops.as_str())];
    let get = |path: &'static str| common::http_with_headers(b.addr(), "GET", path, None, &as_ops);
    assert_eq!(get("/api/queues/orders/messages").await.status, 200);
    let refused = get("/api/queues/payroll/messages").await;
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert_eq!(refused.json()["error"]["code"], "access_refused");
    assert!(!refused.body.contains("salaries"));
    let purge =
        common::http_with_headers(b.addr(), "POST", "/api/queues/payroll/purge", None, &as_ops)
            .await;
    assert_eq!(purge.status, 403);
    assert_eq!(admin.queue_info("payroll").await.unwrap().ready, 1);
}

#[tokio::test]
async fn the_http_api_acts_in_the_vhost_a_request_names() {
    let b = common::HttpBroker::start().await;
    let admin = b.client().await;
    admin
        .declare_queue("root-only", QueueOptions::durable())
        .await
        .unwrap();
    admin.add_vhost("prod").await.unwrap();
    admin
        .add_user("ops", "pw", &[broker::auth::Tag::Management])
        .await
        .unwrap();
    admin
        .set_permissions(permissions("ops", "prod", ".*", ".*", ".*"))
        .await
        .unwrap();
    let ops = broker::client::credentials::basic_header("ops", "pw");
    let as_ops = [("Authorization", ops.as_str())];
    let addr = b.addr();
    let call = |method: &'static str, path: &'static str, body: Option<&'static str>| {
        common::http_with_headers(addr, method, path, body, &as_ops)
    };

    // Declared, published to and listed in prod, with prod's own names.
    let declared = call("PUT", "/api/queues/orders?vhost=prod", Some("{}")).await;
    assert_eq!(declared.status, 200, "{}", declared.body);
    assert_eq!(declared.json()["queue"], "orders");
    let message = Some(r#"{"routing_key": "orders", "body": "in prod"}"#);
    let path = "/api/exchanges/amq.default/publish?vhost=prod";
    let published = call("POST", path, message).await;
    assert_eq!(
        published.json(),
        serde_json::json!({"routed": true}),
        "{}",
        published.body
    );
    let listed = call("GET", "/api/queues?vhost=prod", None).await;
    assert_eq!(listed.status, 200, "{}", listed.body);
    let listed = listed.json();
    let names: Vec<&str> = listed["queues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["queue"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["orders"]);
    let peeked = call("GET", "/api/queues/orders/messages?vhost=prod", None).await;
    assert!(peeked.body.contains("in prod"), "{}", peeked.body);

    // Vhost `/`, by default or by name: no permissions there.
    for path in [
        "/api/queues",
        "/api/queues?vhost=%2F",
        "/api/queues/root-only",
    ] {
        let refused = call("GET", path, None).await;
        assert_eq!(refused.status, 403, "{path}: {}", refused.body);
        assert_eq!(refused.json()["error"]["code"], "access_refused");
    }
    let refused = call("GET", "/api/queues?vhost=nowhere", None).await;
    assert_eq!(refused.status, 403);
    // The queue lives in prod only: `/` does not have it.
    assert!(!queue_names(&admin).await.contains(&"orders".to_string()));
    let guest_view = b.get("/api/queues?vhost=%2F").await;
    assert!(
        !guest_view.body.contains("\"orders\""),
        "{}",
        guest_view.body
    );
}

#[tokio::test]
async fn a_user_limit_refuses_connections_past_it() {
    let b = TestBroker::start().await;
    let admin = b.client().await;
    admin.add_user("app", "pw", &[]).await.unwrap();
    admin
        .set_permissions(permissions("app", "/", ".*", ".*", ".*"))
        .await
        .unwrap();
    let two = broker::auth::UserLimits {
        max_connections: Some(2),
        max_queues: None,
    };
    admin.set_user_limits("app", &two).await.unwrap();
    let listed = admin.list_users().await.unwrap();
    let app = listed.iter().find(|u| u.user == "app").unwrap();
    assert_eq!(app.max_connections, Some(2));

    let url = url_as(&b, "app", "pw", "/");
    let first = Client::connect(&url).await.unwrap();
    let second = Client::connect(&url).await.unwrap();
    first.list_queues().await.unwrap();
    second.list_queues().await.unwrap();
    let third = Client::connect(&url).await.unwrap();
    let refused = tokio::time::timeout(WAIT, third.list_queues())
        .await
        .expect("an answer in time");
    assert!(refused.is_err(), "{refused:?}");
    let connections = admin.list_connections().await.unwrap();
    assert_eq!(connections.iter().filter(|c| c.user == "app").count(), 2);
    // A closed connection gives its place back; lifting the limit lifts it.
    first.close().await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let again = Client::connect(&url).await.unwrap();
        if again.list_queues().await.is_ok() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the place came back"
        );
    }
    admin
        .set_user_limits("app", &Default::default())
        .await
        .unwrap();
    let fourth = Client::connect(&url).await.unwrap();
    fourth.list_queues().await.unwrap();
}
