//! `broker consume`: the consumer script.

use clap::Args;

use super::publish::ensure_queue;

#[derive(Args)]
pub struct ConsumeArgs {
    /// Queue to consume from (declared durable if missing).
    queue: String,
    /// Exit after this many messages (default: run until interrupted); none past them is
    /// taken from the queue.
    #[arg(long)]
    count: Option<u64>,
    /// Most unacked messages in flight.
    #[arg(long, default_value_t = broker::protocol::DEFAULT_PREFETCH)]
    prefetch: u32,
    /// Receive through this filter handler (attached with `handler attach --mode filter`).
    #[arg(long)]
    filter: Option<String>,
    #[command(flatten)]
    server: super::admin::ServerArg,
}

pub async fn run(args: ConsumeArgs) -> anyhow::Result<()> {
    let client = args.server.connect().await?;
    ensure_queue(&client, &args.queue).await?;
    // With `--count N`, nothing past the N-th is delivered: at most N in flight, and the
    // acks that would let the broker send past it wait until the consumer is cancelled
    // (a message taken ahead and not printed would go back marked redelivered).
    let prefetch = match args.count {
        Some(n) => args
            .prefetch
            .min(u32::try_from(n).unwrap_or(u32::MAX).max(1)),
        None => args.prefetch,
    };
    let mut subscription = match &args.filter {
        Some(filter) => {
            client
                .consume_filtered(&args.queue, prefetch, filter)
                .await?
        }
        None => client.consume(&args.queue, prefetch).await?,
    };
    let mut seen = 0;
    let mut held = Vec::new();
    while args.count.is_none_or(|n| seen < n) {
        let delivery = tokio::select! {
            d = subscription.next() => match d {
                Some(d) => d,
                None => anyhow::bail!("the subscription ended (queue deleted or connection lost)"),
            },
            _ = tokio::signal::ctrl_c() => break,
        };
        println!("{}", serde_json::to_string(&delivery)?);
        seen += 1;
        match args.count {
            // Acking this one would let the broker send one past the N-th.
            Some(n) if seen + u64::from(prefetch) > n => held.push(delivery.delivery_tag),
            _ => client.ack(delivery.delivery_tag, false)?,
        }
    }
    if !held.is_empty() {
        client.cancel(&subscription.consumer_tag).await?;
        for tag in held {
            client.ack(tag, false)?;
        }
    }
    // A round trip after the last ack: the broker has processed every ack before we leave.
    client.queue_info(&args.queue).await?;
    client.close().await;
    Ok(())
}
