//! With the queues on several shards (`broker serve --queue-shards N`), each owned by its
//! own router task, what crosses shards still behaves as with one: a publish to queues on
//! several shards reaches all of them and is confirmed once; dead letters, alternate
//! routes and requeued dead letters reach queues on other shards; home's bindings follow
//! queues declared and deleted elsewhere; consumer tags are unique per channel across
//! shards; listings, cancels and vhost deletions cover every shard.
//!
//! Placement is a hash of the name with a per-run seed, so each test uses enough queues
//! that they are spread over the shards whatever the seed.

#[path = "support/amqp.rs"]
mod amqp;
#[path = "support/amqp_exchange_helpers.rs"]
mod helpers;

use amqp::{AmqpBroker, within};
use broker::Config;
use broker::protocol::{ErrorCode, SetPermissions, Subscribe};
use helpers::{
    confirm_channel, declare_bound_queue, declare_exchange, drain, durable_queue, no_args,
    publish_confirmed,
};
use lapin::options::{BasicGetOptions, BasicRejectOptions, ExchangeDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, ExchangeKind};

const SHARDS: usize = 4;
/// Enough queues that some land on every shard, and that a pair (a queue and its
/// dead-letter target) on two different shards is all but certain.
const QUEUES: usize = 12;

fn sharded(config: &mut Config) {
    config.queue_shards = SHARDS;
}

fn persistent() -> BasicProperties {
    BasicProperties::default().with_delivery_mode(2)
}

fn args(pairs: &[(&str, &str)]) -> FieldTable {
    let mut table = FieldTable::default();
    for (key, value) in pairs {
        table.insert((*key).into(), AMQPValue::LongString((*value).into()));
    }
    table
}

#[tokio::test]
async fn a_publish_to_queues_on_every_shard_reaches_each_and_is_confirmed_once() {
    let broker = AmqpBroker::start_with(sharded).await;
    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    let fanout = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    declare_exchange(&ch, "fan", ExchangeKind::Fanout, fanout).await;
    for i in 0..QUEUES {
        declare_bound_queue(&ch, &format!("fan-{i}"), "fan", "").await;
    }
    for n in 0..3 {
        let body = format!("m{n}");
        publish_confirmed(&ch, "fan", "", body.as_bytes(), persistent()).await;
    }
    for i in 0..QUEUES {
        let bodies = drain(&ch, &format!("fan-{i}")).await;
        assert_eq!(bodies, [b"m0", b"m1", b"m2"], "fan-{i}");
    }
    // One confirm per publish: a second one for the same publish would have closed the
    // channel ("unknown delivery tag" on the client's side); it still publishes.
    publish_confirmed(&ch, "fan", "", b"after", persistent()).await;
}

#[tokio::test]
async fn dead_letters_reach_queues_on_other_shards_and_are_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let start = || amqp::start_in(dir.path(), sharded);
    let broker = start().await;
    let uri = format!("amqp://guest:guest@{}/%2f", broker.amqp_addr().unwrap());
    let conn = within(lapin::Connection::connect(&uri, Default::default()))
        .await
        .unwrap();
    let ch = confirm_channel(&conn).await;
    for i in 0..QUEUES {
        let (source, target) = (format!("dl-{i}"), format!("dl-target-{i}"));
        within(ch.queue_declare(target.as_str().into(), durable_queue(), no_args()))
            .await
            .unwrap();
        let dead_letter = args(&[
            ("x-dead-letter-exchange", ""),
            ("x-dead-letter-routing-key", &target),
        ]);
        within(ch.queue_declare(source.as_str().into(), durable_queue(), dead_letter))
            .await
            .unwrap();
        publish_confirmed(&ch, "", &source, source.as_bytes(), persistent()).await;
        let got = within(ch.basic_get(source.as_str().into(), BasicGetOptions::default()))
            .await
            .unwrap()
            .expect("a message");
        within(
            got.delivery
                .acker
                .reject(BasicRejectOptions { requeue: false }),
        )
        .await
        .unwrap();
    }
    let json = broker::Client::connect(&broker.url()).await.unwrap();
    let target_count = |i: usize| {
        let json = &json;
        async move {
            json.queue_info(&format!("dl-target-{i}"))
                .await
                .unwrap()
                .ready
        }
    };
    for i in 0..QUEUES {
        within(async {
            while target_count(i).await == 0 {
                tokio::task::yield_now().await;
            }
        })
        .await;
    }
    conn.close(200, "done".into()).await.unwrap();
    broker.shutdown().await;

    // After a restart each dead letter is in its target once, and gone from its source.
    let broker = start().await;
    let json = broker::Client::connect(&broker.url()).await.unwrap();
    for i in 0..QUEUES {
        let source = json.queue_info(&format!("dl-{i}")).await.unwrap();
        let target = json.queue_info(&format!("dl-target-{i}")).await.unwrap();
        assert_eq!((source.ready, source.unacked), (0, 0), "dl-{i}");
        assert_eq!(target.ready, 1, "dl-target-{i}");
        let peeked = json.peek_queue(&format!("dl-target-{i}"), 1).await.unwrap();
        assert_eq!(&peeked[0].message.body[..], format!("dl-{i}").as_bytes());
    }
}

#[tokio::test]
async fn home_binds_queues_of_every_shard_and_forgets_the_bindings_of_deleted_ones() {
    let broker = AmqpBroker::start_with(sharded).await;
    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    let json = broker.json_client().await;
    declare_exchange(&ch, "direct-ex", ExchangeKind::Direct, Default::default()).await;
    for i in 0..QUEUES {
        let name = format!("bound-{i}");
        declare_bound_queue(&ch, &name, "direct-ex", &name).await;
    }
    let bound = |bindings: &[broker::protocol::Binding]| {
        let mut queues: Vec<String> = bindings
            .iter()
            .filter(|b| b.exchange == "direct-ex")
            .map(|b| b.queue.clone())
            .collect();
        queues.sort();
        queues
    };
    assert_eq!(bound(&json.list_bindings().await.unwrap()).len(), QUEUES);
    for i in 0..QUEUES / 2 {
        let name = format!("bound-{i}");
        within(ch.queue_delete(name.as_str().into(), Default::default()))
            .await
            .unwrap();
    }
    // Deleted on their shards; home dropped their bindings before the deletes returned.
    let mut left: Vec<String> = (QUEUES / 2..QUEUES).map(|i| format!("bound-{i}")).collect();
    left.sort();
    assert_eq!(bound(&json.list_bindings().await.unwrap()), left);
    // A queue declared again is bound again, and routed to.
    declare_bound_queue(&ch, "bound-0", "direct-ex", "bound-0").await;
    publish_confirmed(&ch, "direct-ex", "bound-0", b"again", persistent()).await;
    assert_eq!(drain(&ch, "bound-0").await, [b"again"]);
}

#[tokio::test]
async fn an_alternate_exchange_routes_to_queues_on_other_shards_before_confirming() {
    let broker = AmqpBroker::start_with(sharded).await;
    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    declare_exchange(&ch, "alt", ExchangeKind::Fanout, Default::default()).await;
    for i in 0..QUEUES {
        declare_bound_queue(&ch, &format!("alt-{i}"), "alt", "").await;
    }
    let main = args(&[("alternate-exchange", "alt")]);
    within(ch.exchange_declare(
        "main".into(),
        ExchangeKind::Direct,
        Default::default(),
        main,
    ))
    .await
    .unwrap();
    publish_confirmed(&ch, "main", "no-binding", b"unroutable", persistent()).await;
    // Confirmed after every alternate queue stored it: each has it now.
    for i in 0..QUEUES {
        assert_eq!(
            drain(&ch, &format!("alt-{i}")).await,
            [b"unroutable"],
            "alt-{i}"
        );
    }
}

#[tokio::test]
async fn consumer_tags_listings_and_cancels_span_every_shard() {
    let broker = AmqpBroker::start_with(sharded).await;
    let json = broker.json_client().await;
    for i in 0..QUEUES {
        let name = format!("tagged-{i}");
        json.declare_queue(&name, Default::default()).await.unwrap();
    }
    let subscribe = |queue: String, tag: &str| Subscribe {
        queue,
        prefetch: 10,
        auto_ack: false,
        consumer_tag: Some(tag.into()),
        filter: None,
        exclusive: false,
        priority: 0,
        consumer_timeout_ms: None,
    };
    let _first = json
        .subscribe(subscribe("tagged-0".into(), "dup"))
        .await
        .unwrap();
    // The tag is taken on this connection, on whichever shard the next queue is.
    for i in 1..QUEUES {
        let refused = json
            .subscribe(subscribe(format!("tagged-{i}"), "dup"))
            .await;
        let code = refused.err().and_then(|e| e.code());
        assert_eq!(code, Some(ErrorCode::ConsumerTagInUse), "tagged-{i}");
    }
    let mut subscriptions = Vec::new();
    for i in 1..QUEUES {
        let sub = json.subscribe(subscribe(format!("tagged-{i}"), &format!("t{i}")));
        subscriptions.push(sub.await.unwrap());
    }
    // One connection, its consumers gathered from every shard.
    let connections = json.list_connections().await.unwrap();
    let consumers: usize = connections.iter().map(|c| c.consumers.len()).sum();
    assert_eq!(consumers, QUEUES);
    assert_eq!(
        json.list_queues().await.unwrap().len(),
        QUEUES,
        "every shard's queues"
    );
    // A cancel finds its consumer's shard; a second one finds none.
    json.cancel("dup").await.unwrap();
    let again = json.cancel("dup").await.err().and_then(|e| e.code());
    assert_eq!(again, Some(ErrorCode::UnknownConsumer));
    let info = json.queue_info("tagged-0").await.unwrap();
    assert_eq!(info.consumers, 0);
}

#[tokio::test]
async fn deleting_a_vhost_deletes_its_queues_on_every_shard() {
    let broker = AmqpBroker::start_with(sharded).await;
    let admin = broker.json_client().await;
    admin.add_vhost("prod").await.unwrap();
    let full = SetPermissions {
        user: "guest".into(),
        vhost: "prod".into(),
        configure: ".*".into(),
        write: ".*".into(),
        read: ".*".into(),
        plugin: false,
    };
    admin.set_permissions(full.clone()).await.unwrap();
    let uri = format!("amqp://guest:guest@{}/prod", broker.amqp_addr());
    let conn = within(lapin::Connection::connect(&uri, Default::default()))
        .await
        .unwrap();
    let ch = confirm_channel(&conn).await;
    for i in 0..QUEUES {
        let name = format!("prod-{i}");
        within(ch.queue_declare(name.as_str().into(), durable_queue(), no_args()))
            .await
            .unwrap();
        publish_confirmed(&ch, "", &name, b"x", persistent()).await;
    }
    admin.delete_vhost("prod").await.unwrap();
    admin.add_vhost("prod").await.unwrap();
    admin.set_permissions(full).await.unwrap();
    let uri = format!("amqp://guest:guest@{}/prod", broker.amqp_addr());
    let conn = within(lapin::Connection::connect(&uri, Default::default()))
        .await
        .unwrap();
    for i in 0..QUEUES {
        // A refused passive declare closes its channel: one each.
        let ch = conn.create_channel().await.unwrap();
        let passive = lapin::options::QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        let name = format!("prod-{i}");
        let gone = within(ch.queue_declare(name.as_str().into(), passive, no_args())).await;
        let code = gone.err().as_ref().and_then(amqp::reply_code);
        assert_eq!(code, Some(404), "{name} outlived its vhost");
    }
}

#[tokio::test]
async fn a_dead_letter_cycle_across_shards_is_cut_off() {
    let broker = AmqpBroker::start_with(sharded).await;
    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    let json = broker.json_client().await;
    // Pairs of one-message queues that dead-letter their evictions into each other: a
    // publish into a full one sends messages round the pair for ever, unless the chain
    // is cut off (then one is dropped). Most pairs are on two shards.
    const PAIRS: usize = 6;
    for i in 0..PAIRS {
        for (me, other) in [("a", "b"), ("b", "a")] {
            let mut arguments = args(&[
                ("x-dead-letter-exchange", ""),
                ("x-dead-letter-routing-key", &format!("cycle-{i}-{other}")),
            ]);
            arguments.insert("x-max-length".into(), AMQPValue::LongInt(1));
            let name = format!("cycle-{i}-{me}");
            within(ch.queue_declare(name.as_str().into(), durable_queue(), arguments))
                .await
                .unwrap();
            publish_confirmed(&ch, "", &name, name.as_bytes(), persistent()).await;
        }
        let first = format!("cycle-{i}-a");
        publish_confirmed(&ch, "", &first, b"one too many", persistent()).await;
    }
    for i in 0..PAIRS {
        let dropped = || async {
            let a = json.queue_info(&format!("cycle-{i}-a")).await.unwrap();
            let b = json.queue_info(&format!("cycle-{i}-b")).await.unwrap();
            (a.dropped + b.dropped, a.ready + b.ready)
        };
        let (dropped, ready) = within(async {
            loop {
                let now = dropped().await;
                if now.0 > 0 {
                    break now;
                }
                tokio::task::yield_now().await;
            }
        })
        .await;
        assert_eq!((dropped, ready), (1, 2), "pair {i}");
    }
}

#[tokio::test]
async fn a_handlers_outputs_reach_queues_on_other_shards_with_its_ack_stored_once() {
    use broker::protocol::{AttachHandler, Binding, HandlerMode};
    let dir = tempfile::tempdir().unwrap();
    let broker = amqp::start_in(dir.path(), sharded).await;
    let json = broker::Client::connect(&broker.url()).await.unwrap();
    let durable = broker::QueueOptions::durable();
    // `enrich` publishes each message it handles to its `exchange` (with `routing_key`, or
    // `{queue}.enriched`): a fanout to a queue on every shard, and the default exchange to
    // one queue (on another shard than its source, most likely).
    let no_arguments = Default::default();
    json.declare_exchange("enriched", "fanout", true, no_arguments)
        .await
        .unwrap();
    for i in 0..QUEUES {
        let queue = format!("out-{i}");
        json.declare_queue(&queue, durable.clone()).await.unwrap();
        let binding = Binding {
            exchange: "enriched".into(),
            queue,
            key: String::new(),
            arguments: Default::default(),
        };
        json.bind(binding).await.unwrap();
    }
    json.declare_queue("single-out", durable.clone())
        .await
        .unwrap();
    let attach = |queue: &str, config: &[(&str, &str)]| AttachHandler {
        queue: queue.into(),
        plugin: "enrich".into(),
        mode: HandlerMode::Consume,
        concurrency: 1,
        config: config
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    };
    for (queue, config) in [
        ("to-every-shard", &[("exchange", "enriched")][..]),
        (
            "to-one",
            &[("exchange", ""), ("routing_key", "single-out")][..],
        ),
    ] {
        json.declare_queue(queue, durable.clone()).await.unwrap();
        json.attach_handler(attach(queue, config)).await.unwrap();
        for id in 0..3 {
            let mut message = broker::Message::text(queue, format!(r#"{{"id":{id}}}"#));
            message.properties.persistent = true;
            json.publish(message, false).await.unwrap();
        }
    }
    let settled = |queue: &'static str| {
        let json = &json;
        async move {
            let info = json.queue_info(queue).await.unwrap();
            info.acked == 3 && info.ready + info.unacked == 0
        }
    };
    within(async {
        while !(settled("to-every-shard").await && settled("to-one").await) {
            tokio::task::yield_now().await;
        }
    })
    .await;
    broker.shutdown().await;

    // After a restart: every output once, every source message acked.
    let broker = amqp::start_in(dir.path(), sharded).await;
    let json = broker::Client::connect(&broker.url()).await.unwrap();
    for i in 0..QUEUES {
        let out = json.queue_info(&format!("out-{i}")).await.unwrap();
        assert_eq!(out.ready, 3, "out-{i}");
    }
    assert_eq!(json.queue_info("single-out").await.unwrap().ready, 3);
    for queue in ["to-every-shard", "to-one"] {
        assert_eq!(json.queue_info(queue).await.unwrap().ready, 0, "{queue}");
    }
    let rows = json.list_handlers().await.unwrap();
    assert_eq!(rows["handlers"].as_array().unwrap().len(), 2, "{rows}");
}

#[tokio::test]
async fn a_handler_output_refused_by_a_full_queue_on_another_shard_fails_the_delivery() {
    use broker::protocol::{AttachHandler, HandlerMode};
    let dir = tempfile::tempdir().unwrap();
    let broker = amqp::start_in(dir.path(), sharded).await;
    let json = broker::Client::connect(&broker.url()).await.unwrap();
    let options = |arguments: serde_json::Value| broker::QueueOptions {
        durable: true,
        arguments: arguments.as_object().cloned().unwrap(),
        ..Default::default()
    };
    let full = serde_json::json!({"max_length": 1, "overflow": "reject_publish"});
    json.declare_queue("full", options(full)).await.unwrap();
    let mut first = broker::Message::text("full", "already here");
    first.properties.persistent = true;
    json.publish(first, true).await.unwrap();
    // Each source's handler publishes to `full`: most sources are on another shard than
    // it, some maybe on its own. Either way the delivery fails, is retried, and is
    // dead-lettered as a handler failure at the limit; `full` keeps its one message.
    let retried = serde_json::json!({"retry_backoff": ["10ms"], "max_deliveries": 2});
    for i in 0..QUEUES {
        let source = format!("source-{i}");
        json.declare_queue(&source, options(retried.clone()))
            .await
            .unwrap();
        let attach = AttachHandler {
            queue: source.clone(),
            plugin: "enrich".into(),
            mode: HandlerMode::Consume,
            concurrency: 1,
            config: [("exchange", ""), ("routing_key", "full")]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        json.attach_handler(attach).await.unwrap();
        let mut message = broker::Message::text(&source, r#"{"id":1}"#);
        message.properties.persistent = true;
        json.publish(message, true).await.unwrap();
    }
    within(async {
        for i in 0..QUEUES {
            while json
                .queue_info(&format!("source-{i}"))
                .await
                .unwrap()
                .dead_lettered
                == 0
            {
                tokio::task::yield_now().await;
            }
        }
    })
    .await;
    for i in 0..QUEUES {
        let dead = json
            .peek_queue(&format!("source-{i}.dlq"), 10)
            .await
            .unwrap();
        assert_eq!(dead.len(), 1, "source-{i}");
        let deaths = &dead[0].message.headers[broker::router::DEATH_HEADER];
        assert_eq!(deaths[0]["reason"], "plugin_error", "source-{i}");
    }
    let info = json.queue_info("full").await.unwrap();
    assert_eq!((info.ready, info.dropped), (1, 0), "{info:?}");
}

#[tokio::test]
async fn a_full_alternate_queue_on_another_shard_refuses_the_publish() {
    use broker::protocol::Binding;
    let broker = AmqpBroker::start_with(sharded).await;
    let json = broker.json_client().await;
    json.confirm_select().await.unwrap();
    let headers = |value: serde_json::Value| value.as_object().cloned().unwrap();
    let full = broker::QueueOptions {
        durable: true,
        arguments: headers(serde_json::json!({"max_length": 1, "overflow": "reject_publish"})),
        ..Default::default()
    };
    // An unroutable publish is answered by home; each alternate route's one queue is on
    // another shard than home most of the time, on home sometimes. Either way a full
    // queue refuses it, as on one shard: `queue_full`, not a confirm.
    for i in 0..QUEUES {
        let (alt, queue, main) = (format!("alt-{i}"), format!("full-{i}"), format!("main-{i}"));
        json.declare_exchange(&alt, "fanout", true, Default::default())
            .await
            .unwrap();
        json.declare_queue(&queue, full.clone()).await.unwrap();
        let binding = Binding {
            exchange: alt.clone(),
            queue: queue.clone(),
            key: String::new(),
            arguments: Default::default(),
        };
        json.bind(binding).await.unwrap();
        json.publish(broker::Message::text(&queue, "first"), false)
            .await
            .unwrap();
        let alternate = headers(serde_json::json!({ "alternate_exchange": alt }));
        json.declare_exchange(&main, "direct", true, alternate)
            .await
            .unwrap();
        let mut unroutable = broker::Message::text("no-binding", "second");
        unroutable.exchange = main.clone();
        let refused = json.publish(unroutable, false).await.unwrap_err();
        assert_eq!(
            refused.code(),
            Some(ErrorCode::QueueFull),
            "{main}: {refused}"
        );
        assert_eq!(json.queue_info(&queue).await.unwrap().ready, 1, "{queue}");
    }
}
