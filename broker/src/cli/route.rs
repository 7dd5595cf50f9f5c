//! `broker route`: where a message would go, without publishing it.

use broker::{Message, Properties};
use clap::Args;

use super::{parse_key_value, to_headers};

#[derive(Args)]
pub struct RouteArgs {
    /// The exchange (`""` for the default exchange).
    #[arg(long)]
    exchange: String,
    #[arg(long, default_value = "")]
    routing_key: String,
    /// A header, KEY=VALUE (VALUE parsed as JSON when it can be). Repeatable.
    #[arg(long = "header", value_parser = parse_key_value)]
    headers: Vec<(String, serde_json::Value)>,
    /// The message body (for exchanges that route on it).
    #[arg(long, default_value = "")]
    body: String,
    #[arg(long)]
    content_type: Option<String>,
    /// Print the broker's answer as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    server: super::admin::ServerArg,
}

pub async fn run(args: RouteArgs) -> anyhow::Result<()> {
    let client = args.server.connect().await?;
    let message = Message {
        exchange: args.exchange,
        routing_key: args.routing_key,
        headers: to_headers(args.headers),
        properties: Properties {
            content_type: args.content_type,
            ..Default::default()
        },
        body: args.body.into_bytes().into(),
    };
    let answer = client.route(message).await?;
    if args.json {
        println!("{answer}");
        return Ok(());
    }
    let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();
    let exchange = match text(&answer["exchange"]) {
        name if name.is_empty() => "(default)".to_owned(),
        name => name,
    };
    let decider = match answer["plugin_version"].as_u64() {
        Some(version) => format!("plugin `{}` version {version}", text(&answer["type"])),
        None => "the broker (native)".to_owned(),
    };
    println!("exchange {exchange}: routed by {decider}");
    let bindings = answer["bindings"].as_array().cloned().unwrap_or_default();
    println!("matching bindings: {}", bindings.len());
    for b in &bindings {
        println!(
            "  {} -> {}  {}",
            text(&b["key"]),
            text(&b["queue"]),
            b["arguments"]
        );
    }
    let queues: Vec<String> = answer["queues"]
        .as_array()
        .map(|q| q.iter().map(text).collect())
        .unwrap_or_default();
    match queues.is_empty() {
        true => println!("queues: none (the message would be unroutable)"),
        false => println!("queues: {}", queues.join(", ")),
    }
    Ok(())
}
