//! Hot reload, live: a publisher streams orders through a Wasm exchange while its plugin
//! is redeployed mid-stream. Version 1 sends every order to the `standard` lane; version 2
//! sends VIP orders to a new `express` lane. Per-second counts per queue show the switch;
//! the end checks that every confirmed order arrived exactly once, and that VIP orders
//! switched lanes once and never went back (each routed entirely by one version).
//!
//! cargo run -p examples --bin hot-reload [-- --seconds 8]

#[path = "../common.rs"]
mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use broker::protocol::Binding;
use broker::{Client, Headers, Message, QueueOptions};

const V1: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/orders_v1.wasm"));
const V2: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/orders_v2.wasm"));
const LANES: [&str; 2] = ["standard", "express"];
/// Orders published per second.
const RATE: u64 = 2000;

/// Order number → the lanes it was delivered to, and deliveries per lane per second.
#[derive(Default)]
struct Seen {
    lanes: HashMap<u64, Vec<&'static str>>,
    per_second: HashMap<(u64, &'static str), u64>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let seconds: u64 = match std::env::args().skip_while(|a| a != "--seconds").nth(1) {
        Some(n) => n.parse()?,
        None => 6,
    };
    let (url, embedded) = common::broker().await?;
    let admin = Client::connect(&url).await?;
    let v1 = admin.deploy_plugin("orders", V1).await?;
    println!("deployed plugin orders version {}", v1["version"]);
    admin
        .declare_exchange("orders", "orders", false, Headers::new())
        .await?;
    for lane in LANES {
        let queue = format!("orders.{lane}");
        admin.declare_queue(&queue, QueueOptions::default()).await?;
        admin.purge_queue(&queue).await?;
        let binding = Binding {
            exchange: "orders".into(),
            queue,
            key: lane.into(),
            arguments: Headers::new(),
        };
        admin.bind(binding).await?;
    }

    let start = Instant::now();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let mut consumers = Vec::new();
    for lane in LANES {
        let client = Client::connect(&url).await?;
        let mut deliveries = client.consume(&format!("orders.{lane}"), 500).await?;
        let seen = seen.clone();
        consumers.push(tokio::spawn(async move {
            while let Some(d) = deliveries.next().await {
                let order: u64 = String::from_utf8_lossy(&d.message.body).parse().unwrap();
                let mut seen = seen.lock().unwrap();
                seen.lanes.entry(order).or_default().push(lane);
                let second = start.elapsed().as_secs() + 1;
                *seen.per_second.entry((second, lane)).or_default() += 1;
                drop(seen);
                client.ack(d.delivery_tag, false).unwrap();
            }
        }));
    }

    let publisher = Client::connect(&url).await?;
    publisher.confirm_select().await?;
    let total = seconds * RATE;
    let publishing = tokio::spawn(async move {
        let mut confirms = Vec::new();
        for order in 0..total {
            let due = start + Duration::from_micros(order * 1_000_000 / RATE);
            tokio::time::sleep_until(due.into()).await;
            let tier = if order % 4 == 0 { "vip" } else { "regular" };
            let mut m = Message::text(format!("order.{order}.{tier}"), order.to_string());
            m.exchange = "orders".into();
            confirms.push(publisher.publish(m, false));
        }
        let mut confirmed = 0u64;
        for confirm in confirms {
            confirm.await?;
            confirmed += 1;
        }
        anyhow::Ok(confirmed)
    });

    println!("second  standard  express");
    for second in 1..=seconds + 1 {
        tokio::time::sleep_until((start + Duration::from_secs(second)).into()).await;
        if second == seconds / 2 {
            let deploying = Instant::now();
            let v2 = admin.deploy_plugin("orders", V2).await?;
            println!(
                "   -- deployed plugin orders version {} (VIP orders -> express), active in {:.0} ms",
                v2["version"],
                deploying.elapsed().as_secs_f64() * 1e3
            );
        }
        let seen = seen.lock().unwrap();
        let count = |lane| seen.per_second.get(&(second, lane)).copied().unwrap_or(0);
        println!(
            "{second:>6}  {:>8}  {:>7}",
            count("standard"),
            count("express")
        );
    }
    let confirmed = publishing.await??;
    let deadline = Instant::now() + Duration::from_secs(10);
    while seen.lock().unwrap().lanes.len() < confirmed as usize && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let (once, switches, delivered) = {
        let seen = seen.lock().unwrap();
        let once = (0..confirmed).all(|o| seen.lanes.get(&o).is_some_and(|l| l.len() == 1));
        let vip_lanes: Vec<&str> = (0..confirmed)
            .step_by(4)
            .filter_map(|o| seen.lanes.get(&o).map(|l| l[0]))
            .collect();
        let switches = vip_lanes.windows(2).filter(|w| w[0] != w[1]).count();
        let delivered: usize = seen.lanes.values().map(Vec::len).sum();
        (once, switches, delivered)
    };
    println!("{confirmed} orders confirmed, {delivered} delivered, each exactly once: {once}");
    println!("VIP orders changed lanes {switches} time(s), standard -> express");
    let plugins = admin.list_plugins().await?;
    let orders = plugins["plugins"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == "orders");
    if let Some(orders) = orders {
        for v in orders["versions"].as_array().into_iter().flatten() {
            println!("version {} routed {} orders", v["version"], v["messages"]);
        }
    }
    anyhow::ensure!(
        once && switches == 1,
        "lost, duplicated or misrouted orders"
    );
    println!("zero loss: every order routed entirely by one version");

    for consumer in consumers {
        consumer.abort();
    }
    if let Some((broker, _dir)) = embedded {
        broker.shutdown().await;
    }
    Ok(())
}
