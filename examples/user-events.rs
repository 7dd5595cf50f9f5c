//! A `user_events` fan-out served by two in-broker handlers and one remote consumer: the
//! `email-sender` and `loyalty` Wasm plugins replace two tiny consumer services, while an
//! ordinary client consumes the `audit` copy. Each handler processes the same event on its
//! own (see the log lines tagged with the plugin and queue); `loyalty` publishes a points
//! event that is stored in the same commit as its ack.
//!
//! cargo run -p examples --bin user-events

#[path = "common.rs"]
mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use broker::protocol::{AttachHandler, Binding, HandlerMode};
use broker::{Client, Headers, Message, QueueOptions};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // The handlers' log lines (they log through the broker) on stdout, next to ours.
    tracing_subscriber::fmt()
        .with_env_filter("warn,broker::plugin::handler=info")
        .with_writer(std::io::stdout)
        .with_ansi(false)
        .without_time()
        .init();
    let (url, embedded) = common::broker().await?;
    let client = Client::connect(&url).await?;

    client
        .declare_exchange("user_events", "fanout", true, Headers::new())
        .await?;
    for queue in ["email", "loyalty", "audit", "loyalty.points"] {
        client.declare_queue(queue, QueueOptions::durable()).await?;
    }
    for queue in ["email", "loyalty", "audit"] {
        let binding = Binding {
            exchange: "user_events".into(),
            queue: queue.into(),
            key: String::new(),
            arguments: Headers::new(),
        };
        client.bind(binding).await?;
    }
    let attach = |queue: &str, plugin: &str, config: &[(&str, &str)]| AttachHandler {
        queue: queue.into(),
        plugin: plugin.into(),
        mode: HandlerMode::Consume,
        concurrency: 1,
        config: config
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>(),
    };
    client
        .attach_handler(attach("email", "email-sender", &[]))
        .await?;
    // Points events go to the default exchange, i.e. the `loyalty.points` queue.
    client
        .attach_handler(attach("loyalty", "loyalty", &[("exchange", "")]))
        .await?;
    println!("email-sender and loyalty attached; audit is a remote consumer");

    let mut audit = client.consume("audit", 10).await?;
    client.confirm_select().await?;
    let users = ["alice", "bob", "chloe"];
    for user in users {
        let body = format!(r#"{{"user":"{user}","email":"{user}@example.com"}}"#);
        let mut event = Message::text("user.signup", body);
        event.exchange = "user_events".into();
        event.properties.persistent = true;
        client.publish(event, false).await?;
        println!("published user.signup for {user}");
    }
    for _ in users {
        let d = audit.next().await.expect("subscription open");
        println!(
            "audit consumer got {} {}",
            d.message.routing_key,
            String::from_utf8_lossy(&d.message.body)
        );
        client.ack(d.delivery_tag, false)?;
    }

    // Wait for both handlers to finish the three events.
    for _ in 0..500 {
        let points = client.queue_info("loyalty.points").await?.ready;
        let email = client.queue_info("email").await?;
        if points == 3 && email.ready + email.unacked == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let points = client.peek_queue("loyalty.points", 10).await?;
    println!("{} points events stored by loyalty:", points.len());
    for p in points {
        println!("  {}", String::from_utf8_lossy(&p.message.body));
    }
    let list = client.list_handlers().await?;
    for h in list["handlers"].as_array().into_iter().flatten() {
        println!(
            "handler {} on {}: handled {}, acked {}, published {}",
            h["plugin"].as_str().unwrap_or("?"),
            h["queue"].as_str().unwrap_or("?"),
            h["stats"]["handled"],
            h["stats"]["acked"],
            h["stats"]["published"]
        );
    }

    client.close().await;
    if let Some((broker, _dir)) = embedded {
        broker.shutdown().await;
    }
    Ok(())
}
