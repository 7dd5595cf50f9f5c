//! RabbitMQ's seven tutorials, their Python programs as written (pika, a client written by
//! others: tests/amqp_clients/tutorials.py), against the broker's AMQP port: what an
//! application written for RabbitMQ does first, run unmodified but for the port.

#[path = "support/amqp.rs"]
mod amqp;
#[path = "support/python.rs"]
mod python;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use amqp::AmqpBroker;
use serde_json::{Value, json};

/// Bound for one tutorial run (its own waits are bounded at 60 s).
const TUTORIAL_WAIT: Duration = Duration::from_secs(90);

/// Runs tutorial `name` against `b`; the JSON it printed. Fails when pika is missing
/// (.ci/run installs it).
async fn tutorial(b: &AmqpBroker, name: &str) -> Value {
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/amqp_clients/tutorials.py");
    let mut command = Command::new("python3");
    command
        .arg(script)
        .args([name, &b.amqp_addr().port().to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let (success, stdout, stderr) = python::run_with_deadline(command, TUTORIAL_WAIT)
        .await
        .unwrap_or_else(|e| panic!("tutorial `{name}`: {e}"));
    assert!(
        success,
        "tutorial `{name}` failed.\nstdout:\n{stdout}\nstderr:\n{stderr}\n\
         (pika missing? python3 -m pip install pika==1.3.2)"
    );
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last)
        .unwrap_or_else(|e| panic!("tutorial `{name}` printed no JSON ({e}):\n{stdout}\n{stderr}"))
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
    let mut command = Command::new("python3");
    command
        .args(["-c", &snippet])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let (success, stdout, stderr) = python::run_with_deadline(command, TUTORIAL_WAIT)
        .await
        .unwrap();
    assert!(success, "the README's snippet failed:\n{stdout}\n{stderr}");
    let c = b.json_client().await;
    let info = c.queue_info("orders").await.unwrap();
    assert!(info.durable);
    let stored = c.peek_queue("orders", 10).await.unwrap();
    let bodies: Vec<&[u8]> = stored.iter().map(|d| &d.message.body[..]).collect();
    assert_eq!(bodies, [b"order 7"]);
    assert!(stored[0].message.properties.persistent);
}
