//! `broker consume`: the consumer script.

use clap::Args;

use super::publish::ensure_queue;

#[derive(Args)]
pub struct ConsumeArgs {
    /// Queue to consume from (declared durable if missing).
    queue: String,
    /// Exit after this many messages (default: run until interrupted).
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
    let mut subscription = match &args.filter {
        Some(filter) => {
            client
                .consume_filtered(&args.queue, args.prefetch, filter)
                .await?
        }
        None => client.consume(&args.queue, args.prefetch).await?,
    };
    let mut seen = 0;
    while args.count.is_none_or(|n| seen < n) {
        let delivery = tokio::select! {
            d = subscription.next() => match d {
                Some(d) => d,
                None => anyhow::bail!("the subscription ended (queue deleted or connection lost)"),
            },
            _ = tokio::signal::ctrl_c() => break,
        };
        println!("{}", serde_json::to_string(&delivery)?);
        client.ack(delivery.delivery_tag, false)?;
        seen += 1;
    }
    // A round trip after the last ack: the broker has processed every ack before we leave.
    client.queue_info(&args.queue).await?;
    client.close().await;
    Ok(())
}
