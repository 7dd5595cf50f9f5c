//! A work queue: one producer, three competing workers with prefetch 1. Worker 2 fails
//! its first job (nack with requeue), which another worker then picks up, redelivered.
//!
//! cargo run -p examples --bin work-queue

#[path = "common.rs"]
mod common;

use std::sync::Arc;

use broker::{Client, Message, QueueOptions};

const JOBS: usize = 9;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (url, embedded) = common::broker().await?;
    let producer = Client::connect(&url).await?;
    producer
        .declare_queue("jobs", QueueOptions::durable())
        .await?;

    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
    for worker in 1..=3 {
        let client = Arc::new(Client::connect(&url).await?);
        let mut jobs = client.consume("jobs", 1).await?;
        let done = done_tx.clone();
        tokio::spawn(async move {
            let mut failed_once = false;
            while let Some(job) = jobs.next().await {
                let text = String::from_utf8_lossy(&job.message.body).into_owned();
                if worker == 2 && !failed_once {
                    failed_once = true;
                    println!("worker {worker}: {text} failed, requeueing");
                    client.nack(job.delivery_tag, false, true).unwrap();
                    continue;
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await; // "work"
                let again = if job.redelivered {
                    " (redelivered)"
                } else {
                    ""
                };
                println!("worker {worker}: done {text}{again}");
                client.ack(job.delivery_tag, false).unwrap();
                let _ = done.send(text);
            }
        });
    }

    producer.confirm_select().await?;
    for i in 1..=JOBS {
        let mut job = Message::text("jobs", format!("job-{i}"));
        job.properties.persistent = true;
        producer.publish(job, false).await?;
    }
    println!("published {JOBS} jobs, each confirmed on disk");
    let mut finished = Vec::new();
    while finished.len() < JOBS {
        finished.push(done_rx.recv().await.expect("workers running"));
    }
    finished.sort();
    println!("all {} jobs done exactly once", finished.len());
    if let Some((broker, _dir)) = embedded {
        broker.shutdown().await;
    }
    Ok(())
}
