//! The Rust client for real services (issue 18): an application built on
//! `broker::Client` with `ConnectOptions::reconnect`, publishing persistent messages with
//! confirms and consuming with acks, carries on through a SIGKILL of the real broker
//! binary and its restart on the same data directory and port — no confirmed message
//! lost, its subscription back without resubscribing, the publish circuit open while the
//! broker is down and closed after — and, against a broker restarted on an empty data
//! directory, declares its exchange, queue and binding again and refuses to ack a
//! delivery of the dead connection; declarations made while the broker is down are made
//! once it is back; with `max_attempts` it gives up and closes.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use broker::client::{Circuit, Health, LinkState};
use broker::protocol::Binding;
use broker::{Client, ClientError, ConnectOptions, QueueOptions, Reconnect};
use common::{body, next, persistent};
use tokio::sync::watch;

/// Generous bound for a broker restart and the client's recovery.
const RECOVERY: Duration = Duration::from_secs(30);

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// A broker process, killed when dropped (a failing test leaves none behind to keep
/// `cargo test` waiting on its output).
struct Serving(Child);

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The real broker binary serving WebSocket clients on `port`, its data in `dir`;
/// returns once it printed its listening line.
fn serve(dir: &Path, port: u16) -> Serving {
    let mut child = Command::new(common::bin())
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .args([
            "--no-http",
            "--amqp",
            "off",
            "--stomp",
            "off",
            "--log",
            "warn",
        ])
        .arg("--data-dir")
        .arg(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawning the broker binary");
    let mut line = String::new();
    let stdout = child.stdout.take().unwrap();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line).unwrap();
    assert!(line.contains(&format!(":{port}")), "{line}");
    Serving(child)
}

fn sigkill(broker: &mut Serving) {
    broker.0.kill().unwrap(); // SIGKILL on unix
    broker.0.wait().unwrap();
}

/// Reconnects fast; the circuit opens after a second without a connection.
fn reconnecting() -> ConnectOptions {
    let mut reconnect = Reconnect {
        initial_delay: Duration::from_millis(20),
        max_delay: Duration::from_millis(200),
        ..Default::default()
    };
    reconnect.breaker.open_after = Duration::from_secs(1);
    reconnect.breaker.failed_attempts = u32::MAX;
    ConnectOptions {
        reconnect: Some(reconnect),
        ..Default::default()
    }
}

/// Waits (with a deadline) for the client's health to satisfy `check`.
async fn health_until(client: &Client, what: &str, check: impl FnMut(&Health) -> bool) -> Health {
    let mut changes = client.health_changes();
    let waited = tokio::time::timeout(RECOVERY, changes.wait_for(check)).await;
    let health = waited.unwrap_or_else(|_| panic!("health never {what}: {:?}", client.health()));
    health.unwrap().clone()
}

/// What the application has seen so far.
#[derive(Default, Clone)]
struct Progress {
    confirmed: BTreeSet<u64>,
    delivered: BTreeSet<u64>,
    stale_acks: u64,
    publishing_done: bool,
}

const QUEUE: &str = "orders";
const TOTAL: u64 = 1500;
/// Publishes in flight at once (pipelined, each waiting for its confirm).
const WINDOW: u64 = 25;

/// The application: publishes `0..TOTAL` (retrying what fails, waiting for the circuit
/// to close) and consumes with acks, recording both in `progress`.
fn run_app(client: Arc<Client>, mut deliveries: broker::Subscription) -> watch::Receiver<Progress> {
    let (progress, seen) = watch::channel(Progress::default());
    let progress = Arc::new(progress);
    let (consumer, consumer_progress) = (client.clone(), progress.clone());
    tokio::spawn(async move {
        while let Some(delivery) = deliveries.next().await {
            let id: u64 = body(&delivery).parse().unwrap();
            let acked = consumer.ack(delivery.delivery_tag, false);
            consumer_progress.send_modify(|p| {
                p.delivered.insert(id);
                match acked {
                    Ok(()) => {}
                    Err(ClientError::StaleDelivery { .. }) => p.stale_acks += 1,
                    Err(e) => panic!("ack: {e}"),
                }
            });
        }
    });
    tokio::spawn(async move {
        let mut todo: Vec<u64> = (0..TOTAL).rev().collect();
        while !todo.is_empty() {
            let window: Vec<u64> = (0..WINDOW).filter_map(|_| todo.pop()).collect();
            let publishes: Vec<_> = window
                .iter()
                .map(|id| client.publish(persistent(QUEUE, &id.to_string()), false))
                .collect();
            let results = futures_util::future::join_all(publishes).await;
            let mut circuit_open = false;
            for (id, result) in window.iter().zip(results) {
                match result {
                    Ok(()) => progress.send_modify(|p| {
                        p.confirmed.insert(*id);
                    }),
                    Err(ClientError::CircuitOpen { .. } | ClientError::Disconnected) => {
                        circuit_open = true;
                        todo.push(*id);
                    }
                    Err(e) => panic!("publish {id}: {e}"),
                }
            }
            if circuit_open {
                // The application backs off until the client says publishing works.
                let mut health = client.health_changes();
                health
                    .wait_for(|h| h.state == LinkState::Connected && h.circuit == Circuit::Closed)
                    .await
                    .unwrap();
            }
        }
        progress.send_modify(|p| p.publishing_done = true);
    });
    seen
}

async fn progress_until(
    seen: &mut watch::Receiver<Progress>,
    what: &str,
    check: impl FnMut(&Progress) -> bool,
) -> Progress {
    let waited = tokio::time::timeout(RECOVERY, seen.wait_for(check))
        .await
        .map(|progress| progress.unwrap().clone());
    waited.unwrap_or_else(|_| {
        let p = seen.borrow();
        panic!(
            "not {what} in time: {} confirmed, {} delivered",
            p.confirmed.len(),
            p.delivered.len()
        )
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkilled_broker_loses_no_confirmed_message_and_the_app_carries_on() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut broker = serve(dir.path(), port);
    let url = format!("ws://127.0.0.1:{port}");
    let client = Arc::new(Client::connect_with(&url, reconnecting()).await.unwrap());
    assert_eq!(client.health().state, LinkState::Connected);
    client
        .declare_queue(QUEUE, QueueOptions::durable())
        .await
        .unwrap();
    client.confirm_select().await.unwrap();
    let subscription = client.consume(QUEUE, 50).await.unwrap();
    let mut seen = run_app(client.clone(), subscription);

    // Kill the broker in the middle of the stream.
    progress_until(&mut seen, "under way", |p| {
        p.confirmed.len() >= 300 && p.delivered.len() >= 100
    })
    .await;
    sigkill(&mut broker);
    let before_kill = seen.borrow().clone();
    assert!(
        before_kill.confirmed.len() < TOTAL as usize,
        "killed too late"
    );

    // Health: reconnecting, then (after `open_after` down) the circuit opens.
    let down = health_until(&client, "reconnecting", |h| {
        h.state == LinkState::Reconnecting
    })
    .await;
    assert_eq!(down.reconnects, 0);
    assert!(down.last_error.is_some() && down.down_for().is_some());
    let open = health_until(&client, "open", |h| h.circuit == Circuit::Open).await;
    assert_eq!(open.state, LinkState::Reconnecting);
    let refused = client.publish(persistent(QUEUE, "refused"), false).await;
    assert!(
        matches!(refused, Err(ClientError::CircuitOpen { .. })),
        "{refused:?}"
    );
    let refused = client.list_queues().await;
    assert!(
        matches!(refused, Err(ClientError::Disconnected)),
        "{refused:?}"
    );

    // The broker comes back on the same data directory and port.
    let mut broker = serve(dir.path(), port);
    let back = health_until(&client, "connected and closed", |h| {
        h.state == LinkState::Connected && h.circuit == Circuit::Closed
    })
    .await;
    assert_eq!(back.reconnects, 1);
    assert!(back.down_for().is_none());

    // The application finishes without resubscribing, and every confirmed id arrives.
    let done = progress_until(&mut seen, "finished and delivered", |p| {
        p.publishing_done && p.confirmed.is_subset(&p.delivered)
    })
    .await;
    assert_eq!(done.confirmed.len(), TOTAL as usize);
    let after_restart: Vec<_> = done.delivered.difference(&before_kill.delivered).collect();
    assert!(
        after_restart
            .iter()
            .any(|id| !before_kill.confirmed.contains(id)),
        "deliveries of messages published after the restart"
    );
    assert!(before_kill.confirmed.is_subset(&done.delivered));
    let health = client.health();
    eprintln!(
        "{} confirmed before the kill, {} resent, {} stale acks, last error {:?}",
        before_kill.confirmed.len(),
        health.resent,
        done.stale_acks,
        health.last_error
    );
    assert_eq!(
        (health.state, health.circuit, health.reconnects),
        (LinkState::Connected, Circuit::Closed, 1)
    );
    // Publishes in flight at the kill (or made before the circuit opened) went out again.
    assert!(health.resent > 0);
    sigkill(&mut broker);
}

#[tokio::test(flavor = "multi_thread")]
async fn declarations_come_back_on_an_empty_broker_and_stale_acks_are_refused() {
    let (first_dir, second_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let port = free_port();
    let mut broker = serve(first_dir.path(), port);
    let url = format!("ws://127.0.0.1:{port}");
    let client = Client::connect_with(&url, reconnecting()).await.unwrap();
    let binding = Binding {
        exchange: "events".into(),
        queue: "audit".into(),
        key: "signup".into(),
        arguments: Default::default(),
    };
    client
        .declare_exchange("events", "direct", false, Default::default())
        .await
        .unwrap();
    client
        .declare_queue("audit", QueueOptions::default())
        .await
        .unwrap();
    client.bind(binding.clone()).await.unwrap();
    client.confirm_select().await.unwrap();
    let mut audit = client.consume("audit", 10).await.unwrap();
    let publish = |text: &str| {
        let mut message = broker::Message::text("signup", text);
        message.exchange = "events".into();
        client.publish(message, false)
    };
    publish("before").await.unwrap();
    let before = next(&mut audit).await;
    assert_eq!(body(&before), "before");

    // A broker that knows nothing: the client declares and subscribes again.
    sigkill(&mut broker);
    health_until(&client, "reconnecting", |h| {
        h.state == LinkState::Reconnecting
    })
    .await;
    let mut broker = serve(second_dir.path(), port);
    health_until(&client, "connected", |h| h.state == LinkState::Connected).await;
    assert!(client.list_bindings().await.unwrap().contains(&binding));
    assert_eq!(client.queue_info("audit").await.unwrap().consumers, 1);
    publish("after").await.unwrap();
    let after = next(&mut audit).await;
    assert_eq!(body(&after), "after");

    // Both were the broker's delivery 1 on their connection; the old one's ack is
    // refused instead of acking the new delivery.
    assert_ne!(before.delivery_tag, after.delivery_tag);
    let stale = client.ack(before.delivery_tag, false);
    assert!(
        matches!(stale, Err(ClientError::StaleDelivery { delivery_tag }) if delivery_tag == before.delivery_tag),
        "{stale:?}"
    );
    assert_eq!(client.queue_info("audit").await.unwrap().unacked, 1);
    client.ack(after.delivery_tag, false).unwrap();
    // Requests on one connection are handled in order: the ack before this read.
    assert_eq!(client.queue_info("audit").await.unwrap().unacked, 0);
    sigkill(&mut broker);
}

#[tokio::test(flavor = "multi_thread")]
async fn reconnecting_gives_up_after_its_attempts_and_the_client_closes() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut broker = serve(dir.path(), port);
    let mut options = reconnecting();
    if let Some(reconnect) = options.reconnect.as_mut() {
        reconnect.max_attempts = Some(2);
    }
    let client = Client::connect_with(&format!("ws://127.0.0.1:{port}"), options)
        .await
        .unwrap();
    client
        .declare_queue("q", QueueOptions::default())
        .await
        .unwrap();
    let mut subscription = client.consume("q", 1).await.unwrap();
    sigkill(&mut broker);
    let closed = health_until(&client, "closed", |h| h.state == LinkState::Closed).await;
    assert_eq!((closed.failed_attempts, closed.reconnects), (2, 0));
    assert!(closed.last_error.is_some());
    // Its subscriptions end and requests fail as on a client without reconnect.
    let ended = tokio::time::timeout(RECOVERY, subscription.next()).await;
    assert!(matches!(ended, Ok(None)), "{ended:?}");
    let refused = client.publish(persistent("q", "x"), false).await;
    assert!(matches!(refused, Err(ClientError::Closed)), "{refused:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn declarations_made_while_the_broker_is_down_are_made_when_it_is_back() {
    let (first_dir, second_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let port = free_port();
    let mut broker = serve(first_dir.path(), port);
    let client = Arc::new(
        Client::connect_with(&format!("ws://127.0.0.1:{port}"), reconnecting())
            .await
            .unwrap(),
    );
    sigkill(&mut broker);
    health_until(&client, "reconnecting", |h| {
        h.state == LinkState::Reconnecting
    })
    .await;
    // An application starting while the broker is down: its declarations wait (other
    // requests still fail at once).
    let binding = Binding {
        exchange: "orders".into(),
        queue: "billing".into(),
        key: "paid".into(),
        arguments: Default::default(),
    };
    let declaring = {
        let (client, binding) = (client.clone(), binding.clone());
        tokio::spawn(async move {
            client
                .declare_exchange("orders", "direct", true, Default::default())
                .await?;
            client
                .declare_queue("billing", QueueOptions::durable())
                .await?;
            client.bind(binding).await
        })
    };
    let refused = client.list_queues().await;
    assert!(
        matches!(refused, Err(ClientError::Disconnected)),
        "{refused:?}"
    );
    let mut broker = serve(first_dir.path(), port);
    let declared = tokio::time::timeout(RECOVERY, declaring).await;
    declared
        .expect("declared once the broker is back")
        .unwrap()
        .unwrap();
    assert!(client.list_bindings().await.unwrap().contains(&binding));
    // They were remembered too: a broker that lost everything gets them again.
    sigkill(&mut broker);
    let mut broker = serve(second_dir.path(), port);
    health_until(&client, "connected", |h| h.state == LinkState::Connected).await;
    assert!(client.list_bindings().await.unwrap().contains(&binding));
    assert!(client.queue_info("billing").await.unwrap().durable);
    sigkill(&mut broker);
}
