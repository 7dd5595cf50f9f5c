//! Applications written for RabbitMQ, run unmodified but for the port, with clients
//! written by others: RabbitMQ's seven tutorials as their pika programs are published
//! (tests/amqp_clients/tutorials.py), the README's pika snippet, and a Celery application
//! with its worker (tests/amqp_clients/celery_app.py; Celery speaks AMQP through py-amqp,
//! a second client implementation).

#[path = "support/amqp.rs"]
mod amqp;
#[path = "support/python.rs"]
mod python;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use amqp::AmqpBroker;
use serde_json::{Value, json};

/// Bound for one program's run (its own waits are bounded at 60 s).
const PROGRAM_WAIT: Duration = Duration::from_secs(120);

fn clients_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/amqp_clients")
}

/// Runs `python3 args...` in tests/amqp_clients; the JSON it printed last. Fails when the
/// program fails or its client library is missing (.ci/run installs them).
async fn run_python(label: &str, args: &[&str]) -> Value {
    let mut command = Command::new("python3");
    command
        .current_dir(clients_dir())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let (success, stdout, stderr) = python::run_with_deadline(command, PROGRAM_WAIT)
        .await
        .unwrap_or_else(|e| panic!("{label}: {e}"));
    assert!(
        success,
        "{label} failed.\nstdout:\n{stdout}\nstderr:\n{stderr}\n\
         (client missing? see the pip install lines in .ci/run)"
    );
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last)
        .unwrap_or_else(|e| panic!("{label} printed no JSON ({e}):\n{stdout}\n{stderr}"))
}

/// Runs tutorial `name` against `b`; the JSON it printed.
async fn tutorial(b: &AmqpBroker, name: &str) -> Value {
    let port = b.amqp_addr().port().to_string();
    run_python(
        &format!("tutorial `{name}`"),
        &["tutorials.py", name, &port],
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn hello_world() {
    let b = AmqpBroker::start().await;
    let got = tutorial(&b, "hello_world").await;
    assert_eq!(got["received"], json!(["Hello World!"]));
}

#[tokio::test(flavor = "multi_thread")]
async fn work_queues_share_persistent_tasks_fairly_between_two_workers() {
    let b = AmqpBroker::start().await;
    let got = tutorial(&b, "work_queues").await;
    let done = got["done"].as_array().unwrap();
    let mut tasks: Vec<&str> = done.iter().map(|d| d["task"].as_str().unwrap()).collect();
    tasks.sort_unstable();
    let mut sent: Vec<&str> = got["sent"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    sent.sort_unstable();
    assert_eq!(tasks, sent, "every task done exactly once");
    assert!(done.iter().all(|d| d["persistent"] == true), "{got}");
    for worker in ["w1", "w2"] {
        assert!(
            done.iter().any(|d| d["worker"] == worker),
            "prefetch 1 gives both workers tasks: {got}"
        );
    }
    // Acked, so nothing is left in the durable queue.
    let info = b
        .json_client()
        .await
        .queue_info("task_queue")
        .await
        .unwrap();
    assert!(info.durable);
    assert_eq!((info.ready, info.unacked), (0, 0));
}

#[tokio::test(flavor = "multi_thread")]
async fn publish_subscribe_through_a_fanout_to_a_server_named_exclusive_queue() {
    let b = AmqpBroker::start().await;
    let got = tutorial(&b, "publish_subscribe").await;
    assert_eq!(
        got["received"],
        json!([["", "info: Hello World!"], ["", "warning: disk"]])
    );
    // The exclusive queue went with its connection.
    let queue = got["queue"].as_str().unwrap();
    assert!(b.json_client().await.queue_info(queue).await.is_err());
}

#[tokio::test(flavor = "multi_thread")]
async fn routing_by_severity_through_a_direct_exchange() {
    let b = AmqpBroker::start().await;
    let got = tutorial(&b, "routing").await;
    assert_eq!(
        got["received"],
        json!([["warning", "w"], ["error", "e"], ["error", "e2"]])
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn topics_route_by_pattern() {
    let b = AmqpBroker::start().await;
    let got = tutorial(&b, "topics").await;
    assert_eq!(
        got["received"],
        json!([
            ["kern.critical", "A critical kernel error"],
            ["kern.info", "kernel info"],
            ["cron.critical", "cron is down"]
        ])
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn rpc_with_a_callback_queue_and_correlation_ids() {
    let b = AmqpBroker::start().await;
    let got = tutorial(&b, "rpc").await;
    assert_eq!(got["answers"], json!({"10": 55, "20": 6765, "1": 1}));
    assert_eq!(got["served"], json!([10, 20, 1]));
}

#[tokio::test(flavor = "multi_thread")]
async fn rpc_with_direct_reply_to() {
    let b = AmqpBroker::start().await;
    let got = tutorial(&b, "rpc_direct_reply_to").await;
    assert_eq!(got["callback_queue"], "amq.rabbitmq.reply-to");
    assert_eq!(got["answers"], json!({"10": 55, "20": 6765, "1": 1}));
}

#[tokio::test(flavor = "multi_thread")]
async fn publisher_confirms_and_a_mandatory_publish_returned() {
    let b = AmqpBroker::start().await;
    let got = tutorial(&b, "publisher_confirms").await;
    assert_eq!(got["confirmed"], 50);
    assert_eq!(got["unroutable"], "returned");
    assert_eq!(got["message_count"], 50);
}

/// The README's pika snippet, as written there but for the port: the message it
/// publishes is confirmed, stored, and read back over the JSON protocol.
#[tokio::test(flavor = "multi_thread")]
async fn the_readme_pika_snippet_publishes_a_persistent_message() {
    let readme =
        std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
            .unwrap();
    let section = &readme[readme
        .find("## AMQP 0-9-1")
        .expect("README has the AMQP section")..];
    let start = section.find("```python\n").expect("a python block") + "```python\n".len();
    let snippet = &section[start..start + section[start..].find("```").unwrap()];
    assert!(snippet.contains("127.0.0.1:5672"), "{snippet}");
    let b = AmqpBroker::start().await;
    let snippet = snippet.replace("127.0.0.1:5672", &b.amqp_addr().to_string());
    let snippet = format!("{snippet}\nprint('{{}}')\n");
    run_python("the README's pika snippet", &["-c", &snippet]).await;
    let c = b.json_client().await;
    let info = c.queue_info("orders").await.unwrap();
    assert!(info.durable);
    let stored = c.peek_queue("orders", 10).await.unwrap();
    let bodies: Vec<&[u8]> = stored.iter().map(|d| &d.message.body[..]).collect();
    assert_eq!(bodies, [b"order 7"]);
    assert!(stored[0].message.properties.persistent);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_celery_worker_runs_tasks_retries_and_answers_remote_control() {
    let b = AmqpBroker::start().await;
    let port = b.amqp_addr().port().to_string();
    let got = run_python("the Celery application", &["celery_run.py", &port]).await;
    assert_eq!(got["add"], 5);
    assert_eq!(got["countdown"], 9, "a task with a countdown");
    assert_eq!(got["group"], json!([0, 2, 4, 6, 8]));
    assert_eq!(got["chain"], 112);
    assert_eq!(
        got["fail"], "boom",
        "the task's exception reaches the caller"
    );
    assert_eq!(got["retries"], 2, "a task retried twice, then done");
    // Remote control: a broadcast through Celery's fanout exchange, replies to each caller.
    let worker = got["ping"][0].as_str().unwrap();
    assert!(worker.starts_with("worker1@"), "{got}");
    assert_eq!(got["stats"], json!([worker]));
}
