//! Request / response over the broker: the client declares an exclusive, broker-named
//! reply queue, sends requests with `reply_to` and `correlation_id`, and matches replies.
//!
//! cargo run -p examples --bin rpc

#[path = "common.rs"]
mod common;

use std::collections::HashMap;
use std::sync::Arc;

use broker::{Client, Message, QueueOptions};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (url, embedded) = common::broker().await?;

    // The server: squares numbers from the `rpc.square` queue.
    let server = Arc::new(Client::connect(&url).await?);
    server
        .declare_queue("rpc.square", QueueOptions::default())
        .await?;
    let mut requests = server.consume("rpc.square", 10).await?;
    let responder = server.clone();
    tokio::spawn(async move {
        while let Some(request) = requests.next().await {
            let n: i64 = String::from_utf8_lossy(&request.message.body)
                .parse()
                .unwrap_or(0);
            let props = &request.message.properties;
            if let Some(reply_to) = &props.reply_to {
                let mut reply = Message::text(reply_to.clone(), (n * n).to_string());
                reply.properties.correlation_id = props.correlation_id.clone();
                let _ = responder.publish(reply, false).await;
            }
            let _ = responder.ack(request.delivery_tag, false);
        }
    });

    // The client: one exclusive reply queue for all its calls.
    let client = Client::connect(&url).await?;
    let exclusive = QueueOptions {
        exclusive: true,
        auto_delete: true,
        ..Default::default()
    };
    let reply_queue = client.declare_queue("", exclusive).await?.queue;
    let mut replies = client.consume(&reply_queue, 10).await?;
    let mut waiting = HashMap::new();
    for n in 1..=5 {
        let id = format!("call-{n}");
        let mut request = Message::text("rpc.square", n.to_string());
        request.properties.reply_to = Some(reply_queue.clone());
        request.properties.correlation_id = Some(id.clone());
        client.publish(request, true).await?;
        waiting.insert(id, n);
    }
    while !waiting.is_empty() {
        let reply = replies.next().await.expect("reply queue open");
        client.ack(reply.delivery_tag, false)?;
        let id = reply
            .message
            .properties
            .correlation_id
            .clone()
            .unwrap_or_default();
        let n = waiting.remove(&id).expect("a reply to a call we made");
        println!(
            "{n}² = {} ({id})",
            String::from_utf8_lossy(&reply.message.body)
        );
    }
    client.close().await;
    if let Some((broker, _dir)) = embedded {
        broker.shutdown().await;
    }
    Ok(())
}
