//! `broker bench soak`: the crash soak. Runs `broker serve` (this executable) on a
//! temporary data directory, publishes persistent messages with confirms and consumes them
//! with acks while killing the broker with SIGKILL at random moments and restarting it;
//! at the end a clean broker drains the queue. Prints one line:
//!
//! `scenario=soak secs=S kills=K published=P confirmed=C delivered=D lost=L duplicates=U
//! duplicates_in_flight=F duplicates_acked_early=E acks_stored=S
//! duplicates_after_stored_ack=A corrupted=X left=N restart_p50_ms=R restart_max_ms=M`
//!
//! `delivered` counts distinct messages. `lost` (confirmed, never delivered) and
//! `corrupted` (a body that is not what was published) must be 0: the command fails
//! otherwise. `duplicates` (deliveries of a message already acked, when the ack did not
//! reach the disk before the kill) are what at-least-once delivery allows; they are split
//! into those acked less than a second before the kill of the broker they went to (in
//! flight, or sent after it) and those acked earlier.
//!
//! Whether an ack was stored is known exactly, not guessed from time: every
//! `SYNC_EVERY` acks the consumer publishes a persistent marker on the same connection.
//! The broker handles a connection's requests in order and commits its store operations
//! in order, so the marker's confirm means every ack sent before it is on disk.
//! `acks_stored` counts the messages whose last ack a marker showed stored (what the
//! check covers); `duplicates_after_stored_ack` counts redeliveries of a message whose
//! ack was known stored: the promise "an acked message never comes back" makes it 0, and the command
//! fails otherwise. `restart`
//! is from spawning `broker serve` on the data directory to its first answered request.

use std::collections::{HashMap, HashSet};
use std::io::BufRead as _;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use broker::{Client, Message, QueueOptions};

const QUEUE: &str = "soak";
/// Where the consumer's sync markers go (the newest one kept).
const SYNC_QUEUE: &str = "soak-sync";
/// Acks between two sync markers.
const SYNC_EVERY: u64 = 50;
/// Publishes in flight per publisher connection.
const WINDOW: usize = 64;

/// What the clients saw, over every broker run.
#[derive(Default)]
struct Seen {
    published: u64,
    confirmed: HashSet<u64>,
    /// Message id → deliveries.
    delivered: HashMap<u64, u64>,
    /// Deliveries of a message after one that was acked: its ack less than a second
    /// before the next kill, or earlier.
    duplicates_in_flight: u64,
    duplicates_acked_early: u64,
    /// Deliveries of a message whose ack a confirmed sync marker showed stored.
    duplicates_after_stored_ack: u64,
    corrupted: u64,
    /// Message id → its (last) ack.
    acked: HashMap<u64, Ack>,
    /// Broker run → how many of its consumer's sync markers were confirmed (in order).
    synced: HashMap<usize, u64>,
    /// How long each confirmed sync marker took from send to confirm: an upper bound on
    /// how long the acks sent just before it took to be stored.
    sync_ms: Vec<f64>,
    /// When each kill was, in order.
    kills: Vec<Instant>,
}

/// An ack as the consumer sent it.
#[derive(Clone, Copy)]
struct Ack {
    at: Instant,
    /// The broker run it went to.
    run: usize,
    /// The index of the first sync marker sent after it: once that marker is confirmed,
    /// the ack is stored.
    marker: u64,
}

impl Seen {
    /// Whether a confirmed sync marker showed `ack` stored.
    fn ack_stored(&self, ack: Ack) -> bool {
        self.synced.get(&ack.run).is_some_and(|n| *n > ack.marker)
    }

    /// Whether an ack sent at `acked_at` to broker run `run` had a second or more before
    /// that broker was killed (its redelivery can come several runs later; an ack sent
    /// after the kill, before the consumer noticed, never reached a broker).
    fn acked_long_before_a_kill(&self, acked_at: Instant, run: usize) -> bool {
        self.kills
            .get(run)
            .is_some_and(|kill| kill.saturating_duration_since(acked_at) >= ACK_SETTLED)
    }
}

/// An ack this long before a kill should have reached the disk (commits take milliseconds).
const ACK_SETTLED: Duration = Duration::from_secs(1);

/// The body of message `id`: the id, a filler whose size and bytes follow from it.
fn body(id: u64) -> Vec<u8> {
    let mut body = format!("soak-{id}:").into_bytes();
    let len = (id.wrapping_mul(2_654_435_761) % 2000) as usize;
    body.extend((0..len).map(|i| b'A' + ((i as u64 ^ id) % 26) as u8));
    body
}

fn id_of(body: &[u8]) -> Option<u64> {
    let rest = body.strip_prefix(b"soak-")?;
    let end = rest.iter().position(|b| *b == b':')?;
    std::str::from_utf8(&rest[..end]).ok()?.parse().ok()
}

/// A `broker serve` child on `data_dir`, and its WebSocket URL.
fn spawn_broker(data_dir: &std::path::Path) -> anyhow::Result<(Child, String)> {
    let exe = std::env::current_exe().context("locating the broker executable")?;
    let mut child = Command::new(exe)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--http",
            "off",
            // Only the WebSocket listener: the AMQP and STOMP ports may be taken (by
            // another broker, or RabbitMQ).
            "--amqp",
            "off",
            "--stomp",
            "off",
            "--log",
            "error",
        ])
        .arg("--data-dir")
        .arg(data_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("spawning `broker serve`")?;
    let mut line = String::new();
    let stdout = child.stdout.take().context("the broker's stdout")?;
    std::io::BufReader::new(stdout).read_line(&mut line)?;
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("ws://"))
        .with_context(|| format!("no ws:// address in the broker's first line `{line}`"))?
        .to_owned();
    Ok((child, url))
}

/// Publishes until the connection fails, `WINDOW` in flight; ids from `next_id`.
async fn publish(c: Client, next_id: Arc<Mutex<u64>>, seen: Arc<Mutex<Seen>>) {
    let mut in_flight = std::collections::VecDeque::new();
    loop {
        let id = {
            let mut next = next_id.lock().unwrap();
            *next += 1;
            *next - 1
        };
        let mut message = Message::text(QUEUE, "");
        message.body = body(id).into();
        message.properties.persistent = true;
        seen.lock().unwrap().published += 1;
        in_flight.push_back((id, c.publish(message, false)));
        if in_flight.len() >= WINDOW {
            let (id, confirm) = in_flight.pop_front().expect("not empty");
            match confirm.await {
                Ok(()) => seen.lock().unwrap().confirmed.insert(id),
                Err(_) => return,
            };
        }
    }
}

/// How long the final drain may take.
const DRAIN_LIMIT: Duration = Duration::from_secs(120);

/// Consumes and acks until the connection fails (or, with `until_empty`, until the queue
/// is empty: the final drain).
/// `run` counts the broker runs: the one this connection is to was started after `run`
/// kills.
async fn consume(
    c: &Client,
    seen: &Arc<Mutex<Seen>>,
    run: usize,
    until_empty: bool,
) -> anyhow::Result<()> {
    let mut sub = c.consume(QUEUE, 200).await?;
    let (mut markers, mut acks_since_marker) = (0u64, 0u64);
    let drain_until = Instant::now() + DRAIN_LIMIT;
    loop {
        let delivery = match until_empty {
            true => match tokio::time::timeout(Duration::from_millis(200), sub.next()).await {
                Ok(d) => d,
                Err(_) => {
                    let info = c.queue_info(QUEUE).await?;
                    if info.ready + info.unacked + info.delayed == 0 {
                        return Ok(());
                    }
                    anyhow::ensure!(Instant::now() < drain_until, "the drain stalled: {info:?}");
                    continue;
                }
            },
            false => sub.next().await,
        };
        let Some(d) = delivery else { return Ok(()) };
        let mut record = seen.lock().unwrap();
        match id_of(&d.message.body).filter(|id| d.message.body[..] == body(*id)[..]) {
            Some(id) => {
                *record.delivered.entry(id).or_default() += 1;
                if let Some(ack) = record.acked.get(&id).copied() {
                    match record.acked_long_before_a_kill(ack.at, ack.run) {
                        true => record.duplicates_acked_early += 1,
                        false => record.duplicates_in_flight += 1,
                    }
                    if record.ack_stored(ack) {
                        record.duplicates_after_stored_ack += 1;
                    }
                }
                let ack = Ack {
                    at: Instant::now(),
                    run,
                    marker: markers,
                };
                record.acked.insert(id, ack);
            }
            None => record.corrupted += 1,
        }
        drop(record);
        if c.ack(d.delivery_tag, false).is_err() {
            return Ok(());
        }
        acks_since_marker += 1;
        if acks_since_marker == SYNC_EVERY && !until_empty {
            acks_since_marker = 0;
            send_sync_marker(c, seen, run, markers);
            markers += 1;
        }
    }
}

/// Publishes sync marker `index` on the consumer's connection, after the acks sent so
/// far; its confirm (after the commit holding it, and so every earlier ack) is recorded.
fn send_sync_marker(c: &Client, seen: &Arc<Mutex<Seen>>, run: usize, index: u64) {
    let mut marker = Message::text(SYNC_QUEUE, "sync");
    marker.properties.persistent = true;
    let confirm = c.publish(marker, false);
    let seen = seen.clone();
    let sent = Instant::now();
    tokio::spawn(async move {
        if confirm.await.is_ok() {
            let mut seen = seen.lock().unwrap();
            seen.sync_ms.push(sent.elapsed().as_secs_f64() * 1e3);
            let synced = seen.synced.entry(run).or_default();
            *synced = (*synced).max(index + 1);
        }
    });
}

/// The sync markers' queue: durable, only the newest marker kept.
fn sync_queue_options() -> QueueOptions {
    let mut options = QueueOptions::durable();
    options
        .arguments
        .insert("max_length".into(), serde_json::json!(1));
    options
}

/// Runs the soak for `duration`; `seed` picks the kill moments.
pub async fn run(duration: Duration, seed: u64) -> anyhow::Result<()> {
    let dir = tempfile::tempdir().context("creating a temporary data directory")?;
    let mut rng = fastrand::Rng::with_seed(seed);
    let seen = Arc::new(Mutex::new(Seen::default()));
    let next_id = Arc::new(Mutex::new(0));
    let started = Instant::now();
    let mut kills = 0;
    let mut restarts_ms = Vec::new();
    while started.elapsed() < duration {
        let spawned = Instant::now();
        let (mut child, url) = spawn_broker(dir.path())?;
        let publisher = Client::connect(&url).await?;
        publisher
            .declare_queue(QUEUE, QueueOptions::durable())
            .await?;
        restarts_ms.push(spawned.elapsed().as_secs_f64() * 1e3);
        publisher
            .declare_queue(SYNC_QUEUE, sync_queue_options())
            .await?;
        publisher.confirm_select().await?;
        let consumer = Client::connect(&url).await?;
        consumer.confirm_select().await?;
        let publishing = tokio::spawn(publish(publisher, next_id.clone(), seen.clone()));
        let consuming = {
            let seen = seen.clone();
            tokio::spawn(async move { consume(&consumer, &seen, kills, false).await })
        };
        // Sometimes at once: during the first commits after recovery.
        let uptime = match rng.u8(..10) {
            0 => rng.u64(..30),
            _ => rng.u64(100..1500),
        };
        tokio::time::sleep(Duration::from_millis(uptime)).await;
        child.kill().context("SIGKILL to the broker")?;
        child.wait()?;
        seen.lock().unwrap().kills.push(Instant::now());
        kills += 1;
        let _ = publishing.await;
        let _ = consuming.await;
    }
    // A clean run drains what is left.
    let (mut child, url) = spawn_broker(dir.path())?;
    let consumer = Client::connect(&url).await?;
    consume(&consumer, &seen, kills, true).await?;
    let left = consumer.queue_info(QUEUE).await?;
    consumer.close().await;
    let _ = child.kill();
    child.wait()?;

    let seen = seen.lock().unwrap();
    let lost = seen
        .confirmed
        .iter()
        .filter(|id| !seen.delivered.contains_key(id))
        .count();
    let delivered = seen.delivered.len();
    let acks_stored = seen
        .acked
        .values()
        .filter(|ack| seen.ack_stored(**ack))
        .count();
    let (restart_p50, restart_max) = median_and_max(&mut restarts_ms);
    let mut sync_ms = seen.sync_ms.clone();
    let (sync_p50, sync_max) = median_and_max(&mut sync_ms);
    let sync_p99 = sync_ms
        .get(sync_ms.len() * 99 / 100)
        .copied()
        .unwrap_or(0.0);
    println!(
        "scenario=soak secs={:.1} kills={kills} published={} confirmed={} delivered={delivered} \
         lost={lost} duplicates={} duplicates_in_flight={} duplicates_acked_early={} \
         acks_stored={acks_stored} duplicates_after_stored_ack={} corrupted={} left={} \
         restart_p50_ms={restart_p50:.0} restart_max_ms={restart_max:.0} \
         ack_stored_p50_ms={sync_p50:.0} ack_stored_p99_ms={sync_p99:.0} \
         ack_stored_max_ms={sync_max:.0}",
        started.elapsed().as_secs_f64(),
        seen.published,
        seen.confirmed.len(),
        seen.duplicates_in_flight + seen.duplicates_acked_early,
        seen.duplicates_in_flight,
        seen.duplicates_acked_early,
        seen.duplicates_after_stored_ack,
        seen.corrupted,
        left.ready + left.unacked,
    );
    anyhow::ensure!(
        lost == 0 && seen.corrupted == 0 && seen.duplicates_after_stored_ack == 0,
        "{lost} confirmed messages lost, {} corrupted, {} redelivered after their ack was stored",
        seen.corrupted,
        seen.duplicates_after_stored_ack
    );
    Ok(())
}

/// The median and the largest of `values` (0 for none); sorts them.
fn median_and_max(values: &mut [f64]) -> (f64, f64) {
    values.sort_by(f64::total_cmp);
    let median = values.get(values.len() / 2).copied().unwrap_or(0.0);
    (median, values.last().copied().unwrap_or(0.0))
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_ack_is_judged_by_the_kill_of_the_broker_it_went_to() {
        use std::time::{Duration, Instant};
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let seen = super::Seen {
            kills: vec![at(1_000), at(5_000), at(9_000)],
            ..Default::default()
        };
        // To run 1, 200 ms before its kill at 5 s: in flight, though redelivered after 9 s.
        assert!(!seen.acked_long_before_a_kill(at(4_800), 1));
        // To run 1, 2.5 s before its kill.
        assert!(seen.acked_long_before_a_kill(at(2_500), 1));
        // Sent after run 1 was killed (the consumer had not noticed), 3 s before the next.
        assert!(!seen.acked_long_before_a_kill(at(6_000), 1));
        // To the last run, which is not killed.
        assert!(!seen.acked_long_before_a_kill(at(9_500), 3));
    }

    #[test]
    fn bodies_name_their_ids() {
        for id in [0, 7, 123_456] {
            assert_eq!(super::id_of(&super::body(id)), Some(id));
        }
    }
}
