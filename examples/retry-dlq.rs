//! Retries with backoff, then the dead-letter queue: the flow teams hand-build on simple
//! brokers. A payment consumer fails transiently; the queue redelivers after growing
//! delays (5 s / 30 s / 120 s in production, scaled down 50x here), gives up after
//! `max_deliveries`, and a DLQ consumer prints the dead letter with its death record.
//!
//! cargo run -p examples --bin retry-dlq

#[path = "common.rs"]
mod common;

use std::time::Instant;

use broker::router::DEATH_HEADER;
use broker::{Client, Message, QueueOptions};
use serde_json::json;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (url, embedded) = common::broker().await?;
    let client = Client::connect(&url).await?;
    let arguments = json!({
        "max_deliveries": 4,
        "retry_backoff": ["100ms", "600ms", "2400ms"], // 5s, 30s, 120s scaled down
    });
    let options = QueueOptions {
        durable: true,
        arguments: arguments.as_object().cloned().unwrap_or_default(),
        ..Default::default()
    };
    client.declare_queue("payments", options).await?;
    client.confirm_select().await?;
    let mut payment = Message::text("payments", r#"{"order": 42, "amount": "19.99"}"#);
    payment.properties.persistent = true;
    payment.properties.message_id = Some("payment-42".into());
    client.publish(payment, false).await?;
    println!("published payment-42 (confirmed on disk)");

    let start = Instant::now();
    let mut payments = client.consume("payments", 1).await?;
    for _ in 0..4 {
        let d = payments.next().await.expect("subscription open");
        println!(
            "[{:>5} ms] attempt {} of payment-42: card processor timed out, nack",
            start.elapsed().as_millis(),
            d.delivery_count
        );
        client.nack(d.delivery_tag, false, true)?;
    }

    // The DLQ consumer: what teams otherwise write by hand.
    let dlq = Client::connect(&url).await?;
    dlq.declare_queue("payments.dlq", QueueOptions::durable())
        .await
        .ok();
    let mut dead = dlq.consume("payments.dlq", 1).await?;
    let d = dead.next().await.expect("dead letter");
    let record = &d.message.headers[DEATH_HEADER][0];
    println!(
        "[{:>5} ms] dead letter {}: reason={} queue={} count={} body={}",
        start.elapsed().as_millis(),
        d.message.properties.message_id.as_deref().unwrap_or("-"),
        record["reason"],
        record["queue"],
        record["count"],
        String::from_utf8_lossy(&d.message.body)
    );
    dlq.ack(d.delivery_tag, false)?;
    println!("replay it later with: broker dlq payments --requeue");
    if let Some((broker, _dir)) = embedded {
        broker.shutdown().await;
    }
    Ok(())
}
