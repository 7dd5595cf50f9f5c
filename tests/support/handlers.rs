//! Helpers of the handler tests (`handlers.rs`, `handler_versions.rs`).
#![allow(dead_code)] // each test crate uses a different subset

use std::collections::BTreeMap;
use std::time::Duration;

use broker::plugin::{STANDARD_EXCHANGES, STANDARD_HANDLERS};
use broker::protocol::{AttachHandler, HandlerMode};
use broker::{Client, QueueOptions};
use serde_json::Value;

use super::common::WAIT;

pub fn attach(queue: &str, plugin: &str, config: &[(&str, &str)]) -> AttachHandler {
    AttachHandler {
        queue: queue.into(),
        plugin: plugin.into(),
        mode: HandlerMode::Consume,
        concurrency: 1,
        config: config
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>(),
    }
}

pub fn queue_options(arguments: Value) -> QueueOptions {
    QueueOptions {
        durable: true,
        arguments: arguments.as_object().cloned().unwrap_or_default(),
        ..Default::default()
    }
}

/// Polls until `done` holds for the queue's info, or fails after [`WAIT`].
pub async fn wait_for(
    c: &Client,
    queue: &str,
    done: impl Fn(&broker::protocol::QueueInfo) -> bool,
) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let info = c.queue_info(queue).await.unwrap();
        if done(&info) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "queue `{queue}` never reached the expected state: {info:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The attachment's row in `list_handlers`.
pub async fn handler_row(c: &Client, queue: &str, plugin: &str) -> Value {
    let list = c.list_handlers().await.unwrap();
    list["handlers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["queue"] == queue && h["plugin"] == plugin)
        .cloned()
        .unwrap_or_else(|| panic!("no attachment {queue}/{plugin} in {list}"))
}

pub fn bundled(name: &str) -> &'static [u8] {
    STANDARD_HANDLERS
        .iter()
        .chain(&STANDARD_EXCHANGES)
        .find(|(n, _)| *n == name)
        .unwrap()
        .1
}
