//! `broker dlq`: the dead-letter consumer users otherwise write by hand.

use broker::router::DEATH_HEADER;
use clap::Args;

#[derive(Args)]
pub struct DlqArgs {
    /// The queue whose dead letters to show (its `<queue>.dlq`), or a DLQ named directly.
    queue: String,
    /// Move the dead letters back to the queue they died in (all, or --message-id).
    #[arg(long)]
    requeue: bool,
    /// With --requeue: only the message with this message_id.
    #[arg(long, requires = "requeue")]
    message_id: Option<String>,
    /// Most dead letters to show.
    #[arg(long, default_value_t = 100)]
    limit: usize,
    #[command(flatten)]
    server: super::admin::ServerArg,
}

pub async fn run(args: DlqArgs) -> anyhow::Result<()> {
    let client = args.server.connect().await?;
    let dlq = if args.queue.ends_with(".dlq") {
        args.queue.clone()
    } else {
        format!("{}.dlq", args.queue)
    };
    if args.requeue {
        let moved = client
            .requeue_dead_letters(&dlq, args.message_id.as_deref())
            .await?;
        println!("moved {moved} messages from {dlq} back to their queues");
    } else {
        let messages = client.peek_queue(&dlq, args.limit).await?;
        let total = client.queue_info(&dlq).await?.ready;
        for peeked in &messages {
            let m = &peeked.message;
            let death = m.headers.get(DEATH_HEADER).and_then(|d| d.get(0));
            let field = |name: &str| {
                death
                    .and_then(|d| d.get(name))
                    .map(|v| v.to_string().trim_matches('"').to_owned())
                    .unwrap_or_else(|| "?".into())
            };
            println!(
                "{} reason={} queue={} exchange={:?} routing_key={} count={} time={} body={}",
                m.properties.message_id.as_deref().unwrap_or("-"),
                field("reason"),
                field("queue"),
                field("exchange"),
                field("routing_key"),
                field("count"),
                field("time"),
                String::from_utf8_lossy(&m.body),
            );
        }
        println!("{} of {total} dead letters in {dlq}", messages.len());
    }
    client.close().await;
    Ok(())
}
