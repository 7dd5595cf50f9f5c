//! The live page's traffic: orders through the hot-reload demo's Wasm exchange `orders`,
//! whose plugin is redeployed every few seconds (version 1: every order to the `standard`
//! lane; version 2: VIP orders to `express`), while `examples/live-page/index.html`, opened
//! in a browser, shows each lane over STOMP-over-WebSocket with @stomp/stompjs.
//!
//! cargo run -p examples --bin live-page [-- --seconds 60] [--switch-every 10]
//!
//! It starts an in-process broker that lets pages opened from disk connect (their
//! `Origin` is `null`); with `BROKER_URL=ws://...` it uses yours instead, which then needs
//! `broker serve --allowed-origin null` (see examples/live-page/README.md).

use std::time::{Duration, Instant};

use broker::protocol::Binding;
use broker::{Broker, Client, Config, Headers, Message, QueueOptions};

const V1: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/orders_v1.wasm"));
const V2: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/orders_v2.wasm"));
/// An order every this often.
const ORDER_EVERY: Duration = Duration::from_millis(400);

fn flag(name: &str) -> anyhow::Result<Option<u64>> {
    match std::env::args().skip_while(|a| a != name).nth(1) {
        Some(n) => Ok(Some(n.parse()?)),
        None => Ok(None),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let seconds = flag("--seconds")?;
    let switch_every = Duration::from_secs(flag("--switch-every")?.unwrap_or(10));
    let (url, embedded) = match std::env::var("BROKER_URL") {
        Ok(url) => (url, None),
        Err(_) => {
            let dir = tempfile::tempdir()?;
            let mut config = Config::new(dir.path());
            config.listen = "127.0.0.1:0".parse()?;
            // A page opened from disk (file://) sends `Origin: null`.
            config.allowed_origins = vec!["null".into()];
            let broker = Broker::start(config).await?;
            (broker.url(), Some((broker, dir)))
        }
    };
    let admin = Client::connect(&url).await?;
    let v1 = admin.deploy_plugin("orders", V1).await?;
    println!("deployed plugin orders version {}", v1["version"]);
    let v1_version = v1["version"].as_u64().unwrap_or(1);
    admin
        .declare_exchange("orders", "orders", false, Headers::new())
        .await?;
    // A lane queue each, so `broker route` and the management page show the lanes too;
    // the page's subscriptions get queues of their own.
    for lane in ["standard", "express"] {
        let queue = format!("orders.{lane}");
        let options = QueueOptions {
            arguments: [("max_length".to_owned(), serde_json::json!(1000))]
                .into_iter()
                .collect(),
            ..Default::default()
        };
        admin.declare_queue(&queue, options).await?;
        let binding = Binding {
            exchange: "orders".into(),
            queue,
            key: lane.into(),
            arguments: Headers::new(),
        };
        admin.bind(binding).await?;
    }
    let page = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("live-page/index.html");
    let ws = match &embedded {
        Some(_) => format!("{url}/ws"),
        None => "YOUR-BROKER-WS-URL".to_owned(),
    };
    println!("open file://{}?ws={ws}&exchange=orders", page.display());

    let publisher = Client::connect(&url).await?;
    publisher.confirm_select().await?;
    let start = Instant::now();
    let mut next_switch = start + switch_every;
    let mut active = 1;
    let mut v2 = None;
    let mut order = 0u64;
    while seconds.is_none_or(|s| start.elapsed() < Duration::from_secs(s)) {
        let tier = if order.is_multiple_of(4) {
            "vip"
        } else {
            "regular"
        };
        let mut m = Message::text(format!("order.{order}.{tier}"), format!("order {order}"));
        m.exchange = "orders".into();
        publisher.publish(m, false).await?;
        order += 1;
        if Instant::now() >= next_switch {
            // Version 2 is deployed once; after that, rollbacks switch between the two.
            let switched = match (active, v2) {
                (1, None) => admin.deploy_plugin("orders", V2).await?,
                (1, Some(v2)) => admin.rollback_plugin("orders", Some(v2)).await?,
                _ => admin.rollback_plugin("orders", Some(v1_version)).await?,
            };
            let version = switched["version"].as_u64();
            active = 3 - active;
            let what = match active {
                2 => {
                    v2 = version;
                    "VIP orders -> express"
                }
                _ => "every order -> standard",
            };
            println!(
                "plugin orders version {} active ({what})",
                switched["version"]
            );
            next_switch += switch_every;
        }
        tokio::time::sleep(ORDER_EVERY).await;
    }
    println!("{order} orders published");
    if let Some((broker, _dir)) = embedded {
        broker.shutdown().await;
    }
    Ok(())
}
