//! `broker publish`: the producer script.

use std::io::Read as _;
use std::time::Duration;

use anyhow::{Context as _, bail};
use broker::protocol::ErrorCode;
use broker::{Client, Message, Properties, QueueOptions};
use clap::Args;

use super::{parse_key_value, to_headers};

#[derive(Args)]
pub struct PublishArgs {
    /// Publish to this queue through the default exchange (declared durable if missing).
    queue: Option<String>,
    /// Publish to this exchange instead.
    #[arg(long, requires = "routing_key", conflicts_with = "queue")]
    exchange: Option<String>,
    #[arg(long)]
    routing_key: Option<String>,
    /// A header, KEY=VALUE (VALUE parsed as JSON when it can be). Repeatable.
    #[arg(long = "header", value_parser = parse_key_value)]
    headers: Vec<(String, serde_json::Value)>,
    #[arg(long)]
    priority: Option<u8>,
    /// Messages to publish.
    #[arg(long, default_value_t = 1)]
    count: u64,
    /// Message time to live, in seconds.
    #[arg(long)]
    ttl: Option<f64>,
    /// Pause between messages, in seconds.
    #[arg(long)]
    interval: Option<f64>,
    /// Delayed delivery: the message becomes visible this many seconds after publish.
    #[arg(long)]
    deliver_after: Option<f64>,
    /// Message body; read from stdin when absent.
    #[arg(long)]
    body: Option<String>,
    /// Store messages on disk (on durable queues) before confirming.
    #[arg(long)]
    persistent: bool,
    /// Have the broker return the message if no queue takes it.
    #[arg(long)]
    mandatory: bool,
    #[command(flatten)]
    server: super::admin::ServerArg,
}

pub async fn run(args: PublishArgs) -> anyhow::Result<()> {
    let client = args.server.connect().await?;
    let (exchange, routing_key) = match (&args.queue, args.exchange) {
        (Some(queue), _) => {
            ensure_queue(&client, queue).await?;
            (String::new(), queue.clone())
        }
        (None, Some(exchange)) => (exchange, args.routing_key.unwrap_or_default()),
        (None, None) => bail!("name a QUEUE, or --exchange with --routing-key"),
    };
    let body = match args.body {
        Some(body) => body.into_bytes(),
        None => {
            let mut buf = Vec::new();
            std::io::stdin()
                .read_to_end(&mut buf)
                .context("reading the body from stdin")?;
            buf
        }
    };
    let template = Message {
        exchange,
        routing_key,
        headers: to_headers(args.headers),
        properties: Properties {
            persistent: args.persistent,
            priority: args.priority,
            expiration_ms: args.ttl.map(|s| (s * 1000.0) as u64),
            delay_ms: args.deliver_after.map(|s| (s * 1000.0) as u64),
            ..Default::default()
        },
        body: body.into(),
    };
    client.confirm_select().await?;
    let mut confirms = Vec::with_capacity(args.count as usize);
    for i in 0..args.count {
        if i > 0
            && let Some(secs) = args.interval
        {
            tokio::time::sleep(Duration::from_secs_f64(secs)).await;
        }
        confirms.push(client.publish(template.clone(), args.mandatory));
    }
    let mut confirmed = 0;
    let mut refused = Vec::new();
    for confirm in confirms {
        match confirm.await {
            Ok(()) => confirmed += 1,
            Err(e) => refused.push(e),
        }
    }
    println!("confirmed {confirmed} of {} messages", args.count);
    client.close().await;
    if let Some(first) = refused.first() {
        bail!("{} messages were refused; first: {first}", refused.len());
    }
    Ok(())
}

/// Declares `queue` durable unless it exists (with whatever properties it has).
pub async fn ensure_queue(client: &Client, queue: &str) -> anyhow::Result<()> {
    match client.queue_info(queue).await {
        Ok(_) => Ok(()),
        Err(e) if e.code() == Some(ErrorCode::QueueNotFound) => {
            client.declare_queue(queue, QueueOptions::durable()).await?;
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}
