//! Power cuts: the whole broker (real connections, router, store writer, recovery) in
//! process on a simulated disk that keeps writes in a volatile layer until `sync_data`
//! and loses them when the power goes (`store::power_cut`). A `kill -9` cannot catch a
//! missing or misplaced fsync — the page cache survives a killed process — this can.
//!
//! One chain of cycles: a broker starts on the durable image the last cut left (that is
//! the recovery under test), its contents are checked against what the client was told
//! (`support/power_cut_model.rs`), then it runs a round of work — confirmed publishes,
//! delayed publishes, acks, nacks with retry backoff, dead letters, plugin deploys, a
//! queue deeper than its
//! `max_in_memory_length`, large messages — and the power is cut at a random write or
//! sync, sometimes during the startup's own recovery or the clean shutdown. Every cut image
//! also passes `broker check` (`store::check`): a power cut is never damage. A second test
//! cuts one workload at each of its file growths.
//!
//! The commit counter's sidecar (`store/commit_seq.rs`) is a real file in the data
//! directory, which never loses power here: it always names the last commit the broker
//! knew durable, where a real power cut could only leave it older or torn (both accepted
//! on open). That is the strictest case for it: a recovery that fell back past it would
//! refuse the start, which the suite counts as a failure.
//!
//! `POWER_CUT_SEED` (a number or `random`) and `POWER_CUT_POINTS` (default 300) make a
//! longer run: `POWER_CUT_SEED=random POWER_CUT_POINTS=5000 cargo test -p broker --test
//! power_cut -- --nocapture`.

mod common;
#[path = "support/power_cut_model.rs"]
mod model;

use std::sync::Arc;
use std::time::Duration;

use broker::protocol::Delivery;
use broker::store::power_cut::{CutAt, DiskStats, PowerCutDisk, Tear};
use broker::store::{DB_FILE, Sidecar, sidecar_path};
use broker::{Broker, Client, Config, QueueOptions, Subscription};
use model::{DLQ, Expected, IN_DLQ, IN_QUEUE, QUEUE, Tally};
use serde_json::json;

const DEFAULT_POINTS: u64 = 300;
/// Bound on anything the test waits for (a broker that hangs fails the test).
const WAIT: Duration = Duration::from_secs(20);
const PLUGIN: &str = "router";

struct Settings {
    seed: u64,
    points: u64,
}

fn settings() -> Settings {
    let seed = match std::env::var("POWER_CUT_SEED") {
        Ok(s) if s == "random" => fastrand::u64(..),
        Ok(s) => s.parse().expect("POWER_CUT_SEED: a number or `random`"),
        Err(_) => 0x00C0_FFEE,
    };
    let points = std::env::var("POWER_CUT_POINTS")
        .map(|s| s.parse().expect("POWER_CUT_POINTS: a number"))
        .unwrap_or(DEFAULT_POINTS);
    Settings { seed, points }
}

/// A broker on `disk` (the data directory holds only the commit counter's sidecar: the
/// database is the disk).
async fn start(
    dir: &std::path::Path,
    disk: &PowerCutDisk,
    shards: usize,
) -> Result<Broker, String> {
    let mut config = Config::new(dir);
    config.queue_shards = shards;
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.heartbeat = None;
    config.max_frame_bytes = common::FRAME_LIMIT;
    // A host of its own without the bundled exchange types (the workload needs only the
    // default exchange and its deployed plugin): starting is then mostly recovery.
    let limits = broker::plugin::Limits {
        pooled_instances: None,
        ..Default::default()
    };
    config.plugins = Some(broker::plugin::PluginHost::new(limits).unwrap());
    let disk = disk.clone();
    config.storage_backend = Some(Arc::new(move || Box::new(disk.backend())));
    tokio::time::timeout(WAIT, Broker::start(config))
        .await
        .expect("the broker starts or fails in time")
        .map_err(|e| e.to_string())
}

/// The commit counter's sidecar of a broker on `dir`.
fn sidecar(dir: &std::path::Path) -> std::path::PathBuf {
    sidecar_path(&dir.join(DB_FILE))
}

async fn stop(broker: Broker) {
    tokio::time::timeout(WAIT, broker.shutdown())
        .await
        .expect("a broker on a dead disk still shuts down");
}

fn wasm(direct: bool) -> &'static [u8] {
    let name = if direct { "direct" } else { "fanout" };
    broker::plugin::STANDARD_EXCHANGES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, wasm)| *wasm)
        .unwrap()
}

/// The content of plugin version `version`: versions alternate direct / fanout.
fn plugin_version_wasm(version: u64) -> &'static [u8] {
    wasm(version % 2 == 1)
}

/// The durable image every chain starts from: the queue declared, cleanly shut down.
async fn base_image(dir: &std::path::Path, seed: u64, shards: usize) -> Vec<u8> {
    let disk = PowerCutDisk::new(seed);
    let broker = start(dir, &disk, shards).await.unwrap();
    let c = Client::connect(&broker.url()).await.unwrap();
    let arguments = json!({
        "max_in_memory_length": 4,
        "max_deliveries": 3,
        "retry_backoff": ["15ms", "30ms"],
    });
    let options = QueueOptions {
        durable: true,
        arguments: arguments.as_object().unwrap().clone(),
        ..Default::default()
    };
    c.declare_queue(QUEUE, options).await.unwrap();
    c.close().await;
    stop(broker).await;
    disk.image()
}

/// Ready plus delayed messages of `queue` (0 when it does not exist yet).
async fn stored(c: &Client, queue: &str) -> u64 {
    match c.queue_info(queue).await {
        Ok(info) => {
            assert_eq!(info.unacked, 0, "{queue}: nothing delivered yet");
            info.ready + info.delayed
        }
        Err(_) => 0,
    }
}

/// Takes `count` deliveries from `sub`, checking each body.
async fn take(
    sub: &mut Subscription,
    count: u64,
    place: u8,
    seen: &mut Vec<(u64, u8)>,
) -> Vec<Delivery> {
    let mut deliveries = Vec::new();
    while (deliveries.len() as u64) < count {
        let d = tokio::time::timeout(WAIT, sub.next())
            .await
            .expect("every stored message is delivered in time")
            .expect("subscription open");
        let id = model::id_of(&d.message.body).unwrap_or_else(|| {
            panic!(
                "a body that is none of ours: {:?}",
                &d.message.body[..16.min(d.message.body.len())]
            )
        });
        assert!(
            d.message.body[..] == model::body(id)[..],
            "message {id}: body changed ({} bytes, expected {})",
            d.message.body.len(),
            model::body(id).len()
        );
        seen.push((id, place));
        deliveries.push(d);
    }
    deliveries
}

/// Where one cycle cuts the power.
#[derive(Debug, Clone, Copy)]
struct Plan {
    at: CutAt,
    tear: Tear,
    /// The cut aims at the startup's recovery.
    during_recovery: bool,
}

/// How much I/O a cycle does, typically (a moving average over cycles that ran to the
/// end of their work), to aim the next cuts inside it.
#[derive(Debug, Clone, Copy)]
struct Span {
    startup_ops: u64,
    startup_syncs: u64,
    ops: u64,
    syncs: u64,
}

impl Span {
    fn learn(&mut self, started: DiskStats, whole: DiskStats) {
        let average = |old: u64, new: u64| (old * 3 + new).div_ceil(4);
        self.startup_ops = average(self.startup_ops, started.ops);
        self.startup_syncs = average(self.startup_syncs, started.syncs);
        self.ops = average(self.ops, whole.ops);
        self.syncs = average(self.syncs, whole.syncs);
    }
}

fn plan(rng: &mut fastrand::Rng, span: &Span) -> Plan {
    let tear = match rng.u8(..3) {
        0 => Tear::DropAll,
        1 => Tear::TearLast,
        _ => Tear::Scramble,
    };
    // A little past the typical end, so that some cuts come after the work.
    let reach = |n: u64| n + n / 8 + 1;
    let (at, during_recovery) = match rng.u8(..20) {
        0..=2 => (CutAt::Op(rng.u64(..span.startup_ops.max(1))), true),
        3..=10 => (CutAt::Op(rng.u64(span.startup_ops..reach(span.ops))), false),
        // (File growth is rare here, its cuts are `power_cuts_during_file_growth`'s.)
        _ => {
            let first = span.startup_syncs;
            (
                CutAt::Sync(rng.u64(first..reach(span.syncs).max(first + 1))),
                false,
            )
        }
    };
    Plan {
        at,
        tear,
        during_recovery,
    }
}

/// One round of work on a recovered broker whose deliveries (`orders`, `dlq`) the client
/// holds, in three steps (so several commits): settle a part of them, publish more;
/// sometimes deploy a plugin version. Stops at the first failure (the power went).
async fn round(
    c: &Client,
    rng: &mut fastrand::Rng,
    expected: &mut Expected,
    tally: &mut Tally,
    mut held: Vec<(Delivery, u8)>,
    disk: &PowerCutDisk,
) {
    const STEPS: usize = 3;
    let deploy_at = rng.usize(..STEPS * 4);
    for step in 0..STEPS {
        let rest = held.len() / (STEPS - step);
        let chunk: Vec<_> = held.drain(..rest).collect();
        let Some(unfenced) = settle(c, rng, expected, tally, chunk) else {
            return;
        };
        if !publish(c, rng, expected, tally, unfenced, disk).await {
            return;
        }
        if step == deploy_at && !deploy(c, expected).await {
            return;
        }
    }
}

/// Acks, nacks (with requeue: retry backoff, dead letter at the limit), dead-letters or
/// keeps each delivery; returns the acked ids (`None` when the connection failed).
fn settle(
    c: &Client,
    rng: &mut fastrand::Rng,
    expected: &mut Expected,
    tally: &mut Tally,
    held: Vec<(Delivery, u8)>,
) -> Option<Vec<u64>> {
    let mut acked = Vec::new();
    for (d, place) in held {
        let id = model::id_of(&d.message.body).unwrap();
        let settled = match (place, rng.u8(..20)) {
            (IN_QUEUE, 0..=7) | (IN_DLQ, 0..=9) => c.ack(d.delivery_tag, false).map(|()| {
                expected.acked(id);
                acked.push(id);
            }),
            (IN_QUEUE, 8..=12) => c
                .nack(d.delivery_tag, false, true)
                .map(|()| expected.nacked(id)),
            (IN_QUEUE, 13..=16) => c.nack(d.delivery_tag, false, false).map(|()| {
                expected.nacked(id);
                tally.dead_lettered += 1;
            }),
            _ => Ok(()),
        };
        settled.ok()?;
    }
    Some(acked)
}

/// Publishes a few messages, pipelined; the acks `unfenced` (sent before them on this
/// connection) are durable once one is confirmed. False once one failed.
async fn publish(
    c: &Client,
    rng: &mut fastrand::Rng,
    expected: &mut Expected,
    tally: &mut Tally,
    mut unfenced: Vec<u64>,
    disk: &PowerCutDisk,
) -> bool {
    let mut confirms = Vec::new();
    for _ in 0..rng.u64(2..14) {
        let id = expected.publish();
        let mut m = broker::Message::text(QUEUE, "");
        m.body = model::body(id).into();
        m.properties.persistent = true;
        // Some delayed: stored whole, recovered waiting for their time.
        if rng.u8(..8) == 0 {
            m.properties.delay_ms = Some(rng.u64(5..40));
        }
        confirms.push((id, c.publish(m, false)));
    }
    for (id, confirm) in confirms {
        match tokio::time::timeout(WAIT, confirm).await {
            Ok(Ok(())) => {
                expected.confirmed(id);
                tally.confirmed += 1;
                for acked in unfenced.drain(..) {
                    expected.fenced(acked);
                    tally.fenced_acks += 1;
                }
            }
            Ok(Err(_)) => return false,
            Err(_) => panic!("no confirm in time (power lost: {})", disk.stats().lost),
        }
    }
    true
}

/// Deploys the next version of plugin `PLUGIN`; false when it failed.
async fn deploy(c: &Client, expected: &mut Expected) -> bool {
    let version = expected.plugin_committed + 1;
    let content = plugin_version_wasm(version);
    expected.plugin_attempted = version;
    expected
        .plugin_hashes
        .insert(version, broker::plugin::content_hash(content));
    match tokio::time::timeout(WAIT, c.deploy_plugin(PLUGIN, content)).await {
        Ok(Ok(reply)) => {
            assert_eq!(reply["version"], version, "{reply}");
            expected.plugin_committed = version;
            true
        }
        Ok(Err(_)) => false,
        Err(_) => panic!("no deploy reply in time"),
    }
}

/// The active version and hash of plugin `PLUGIN` (0 before its first deploy).
async fn active_plugin(c: &Client) -> (u64, Option<String>) {
    let list = c.list_plugins().await.unwrap();
    let plugins = list
        .get("plugins")
        .unwrap_or(&list)
        .as_array()
        .cloned()
        .unwrap_or_default();
    plugins
        .iter()
        .find(|p| p["name"] == PLUGIN)
        .map(|p| {
            (
                p["active_version"].as_u64().unwrap_or(0),
                p["hash"].as_str().map(str::to_owned),
            )
        })
        .unwrap_or((0, None))
}

/// Checks what a freshly recovered broker serves against `expected` (which then takes it
/// as the durable state): every stored message is consumed (delayed ones when due) and
/// kept unacked. Returns the deliveries held, their subscriptions and the problems.
async fn check_recovered(
    c: &Client,
    expected: &mut Expected,
    tally: &mut Tally,
) -> (Vec<(Delivery, u8)>, Vec<Subscription>, Vec<String>) {
    let in_queue = stored(c, QUEUE).await;
    let in_dlq = stored(c, DLQ).await;
    let mut seen = Vec::new();
    let mut held = Vec::new();
    let mut subs = Vec::new();
    for (queue, count, place) in [(QUEUE, in_queue, IN_QUEUE), (DLQ, in_dlq, IN_DLQ)] {
        if count == 0 {
            continue;
        }
        let mut sub = c.consume(queue, 0).await.unwrap();
        let taken = take(&mut sub, count, place, &mut seen).await;
        held.extend(taken.into_iter().map(|d| (d, place)));
        subs.push(sub);
    }
    tally.verified_messages += seen.len() as u64;
    let mut problems = expected.verify(&seen);
    let (active, hash) = active_plugin(c).await;
    problems.extend(expected.verify_plugin(active, hash.as_deref()));
    tally.plugin_checks += 1;
    (held, subs, problems)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmed_messages_survive_power_cuts_and_acked_ones_stay_gone() {
    power_cuts(1).await;
}

/// The same with the queues on 4 shards (`--queue-shards 4`): `orders` and `orders.dlq`
/// are then on two shards in 3 runs of 4 (placement is seeded per run), so dead letters
/// cross shards, and an ack on one shard followed by a confirmed publish on another must
/// still be stored by that confirm (sync parts, `router/conn_sends.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_cuts_with_the_queues_on_four_shards() {
    power_cuts(4).await;
}

async fn power_cuts(shards: usize) {
    let Settings { seed, points } = settings();
    println!("power cut: seed {seed}, {points} cut points");
    let mut rng = fastrand::Rng::with_seed(seed);
    let dir = tempfile::tempdir().unwrap();
    let check_dir = tempfile::tempdir().unwrap();
    let mut image = base_image(dir.path(), seed, shards).await;
    let mut expected = Expected::default();
    let mut tally = Tally::default();
    let mut span = Span {
        startup_ops: 10,
        startup_syncs: 6,
        ops: 60,
        syncs: 12,
    };
    let (mut startup_cuts, mut failed_starts, mut idle_cuts, mut fell_back) = (0, 0, 0, 0);
    // Images whose recovery fell back with the sidecar naming the commit it fell back to.
    let mut fell_back_to_recorded = 0;
    let mut shutdown_cuts = 0;
    let mut by_kind = [0u64; 2];
    // Scheduled cuts that struck (the rest came after the round's work).
    let mut struck = [0u64; 2];
    let mut by_tear = [0u64; 3];
    for point in 0..points {
        let plan = plan(&mut rng, &span);
        let kind = match plan.at {
            CutAt::Sync(_) => 1,
            _ => 0,
        };
        by_kind[kind] += 1;
        by_tear[plan.tear as usize] += 1;
        startup_cuts += plan.during_recovery as u64;
        let disk = PowerCutDisk::from_image(std::mem::take(&mut image), rng.u64(..));
        disk.schedule_cut(plan.at, plan.tear);
        let broker = match start(dir.path(), &disk, shards).await {
            Ok(broker) => broker,
            Err(e) => {
                // The power went during recovery: nothing was served; the next start
                // recovers the image this one left.
                assert!(disk.stats().lost, "start failed without a power cut: {e}");
                failed_starts += 1;
                struck[kind] += 1;
                image = disk.image();
                continue;
            }
        };
        let started = disk.stats();
        let c = Client::connect(&broker.url()).await.unwrap();
        c.confirm_select().await.unwrap();
        let (held, subs, problems) = check_recovered(&c, &mut expected, &mut tally).await;
        assert!(
            problems.is_empty(),
            "after {point} cut points, the last {plan:?}:\n{}",
            problems.join("\n")
        );
        round(&c, &mut rng, &mut expected, &mut tally, held, &disk).await;
        let mut in_shutdown = false;
        match disk.stats().lost {
            true => struck[kind] += 1,
            false => {
                idle_cuts += 1;
                span.learn(started, disk.stats());
                // Now, or during the clean shutdown (its last commit, the allocator
                // state, the file trimmed) if it lasts that long.
                in_shutdown = rng.u8(..5) == 0;
                match in_shutdown {
                    true => {
                        disk.schedule_cut(CutAt::Op(disk.stats().ops + rng.u64(..12)), plan.tear)
                    }
                    false => disk.cut_now(plan.tear),
                }
            }
        }
        // The broker first: it closes the connection as stopping, so the deliveries
        // held go back uncounted (as a power cut would leave them).
        stop(broker).await;
        drop(subs);
        drop(c);
        if in_shutdown {
            match disk.stats().lost {
                true => shutdown_cuts += 1,
                false => disk.cut_now(plan.tear),
            }
        }
        image = disk.image();
        // A power cut is never damage: the offline check passes on every cut image, its
        // recovery never falling back past the commit the sidecar records.
        let checked = check_dir.path().join(broker::store::DB_FILE);
        std::fs::write(&checked, &image).unwrap();
        std::fs::copy(sidecar(dir.path()), sidecar_path(&checked)).unwrap();
        match broker::store::check(check_dir.path()) {
            Ok(report) => {
                fell_back += report.fell_back as u64;
                let recorded = report.sidecar == Sidecar::Recorded(report.commit_seq);
                fell_back_to_recorded += (report.fell_back && recorded) as u64;
            }
            Err(e) => panic!("cut {point} ({plan:?}): `broker check` fails on the cut image: {e}"),
        }
    }
    // The last cut's image, recovered without a cut.
    let disk = PowerCutDisk::from_image(image, seed);
    let broker = start(dir.path(), &disk, shards).await.unwrap();
    let c = Client::connect(&broker.url()).await.unwrap();
    let (_, subs, problems) = check_recovered(&c, &mut expected, &mut tally).await;
    assert!(
        problems.is_empty(),
        "after the last cut:\n{}",
        problems.join("\n")
    );
    drop(subs);
    c.close().await;
    stop(broker).await;
    println!(
        "power cut: {points} cut points: aimed at a write {} (struck {}), at a sync {} \
         (struck {}), at the startup's recovery \
         {startup_cuts} (start failed {failed_starts}); the rest after the round's work \
         ({idle_cuts}, of which {shutdown_cuts} during the clean shutdown); tears: drop all {}, tear last {}, scramble {}; {fell_back} images \
         with a torn last commit (recovered the one before; {fell_back_to_recorded} of them \
         to the commit the sidecar records)",
        by_kind[0], struck[0], by_kind[1], struck[1], by_tear[0], by_tear[1], by_tear[2]
    );
    println!(
        "power cut: verified {} stored messages after {} recoveries ({} confirmed \
         publishes, {} acks fenced by a later confirm, {} dead letters, {} plugin version \
         checks); a typical cycle {span:?}",
        tally.verified_messages,
        tally.plugin_checks,
        tally.confirmed,
        tally.fenced_acks,
        tally.dead_lettered,
        tally.plugin_checks
    );
}

/// A body of the file-growth workload: 64 KiB, naming its id.
fn large_body(id: u64) -> Vec<u8> {
    let mut body = format!("m{id}:").into_bytes();
    body.resize(64 * 1024, b'a' + (id % 26) as u8);
    body
}

/// Publishes `count` large messages (8 in flight); returns the ids confirmed before the
/// first failure.
async fn publish_large(c: &Client, count: u64) -> Vec<u64> {
    let mut confirmed = Vec::new();
    let mut in_flight = std::collections::VecDeque::new();
    for id in 0..count {
        let mut m = broker::Message::text(QUEUE, "");
        m.body = large_body(id).into();
        m.properties.persistent = true;
        in_flight.push_back((id, c.publish(m, false)));
        if in_flight.len() == 8 || id + 1 == count {
            while let Some((id, confirm)) = in_flight.pop_front() {
                match tokio::time::timeout(WAIT, confirm)
                    .await
                    .expect("an answer in time")
                {
                    Ok(()) => confirmed.push(id),
                    Err(_) => return confirmed,
                }
            }
        }
    }
    confirmed
}

/// The same workload — 3 MiB of confirmed messages into an empty queue, growing the file
/// several times — cut at each of its file growths with each tear (scrambles and torn
/// writes with several seeds): every message confirmed before the cut is there once, whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_cuts_during_file_growth() {
    const COUNT: u64 = 48;
    let dir = tempfile::tempdir().unwrap();
    let base = base_image(dir.path(), 1, 1).await;
    // Every run from the base image starts with the base's sidecar (the data directory
    // goes back with the disk).
    let base_sidecar = std::fs::read(sidecar(dir.path())).unwrap();
    // A run without a cut counts the growths.
    let disk = PowerCutDisk::from_image(base.clone(), 1);
    let broker = start(dir.path(), &disk, 1).await.unwrap();
    let started = disk.stats().growths;
    let c = Client::connect(&broker.url()).await.unwrap();
    c.confirm_select().await.unwrap();
    assert_eq!(publish_large(&c, COUNT).await.len() as u64, COUNT);
    let growths = disk.stats().growths - started;
    c.close().await;
    stop(broker).await;
    assert!(
        growths >= 2,
        "the workload grows the file ({growths} growths)"
    );

    let mut cuts = 0;
    for growth in started..started + growths {
        // Scrambles keep a different random part of the unsynced writes with each seed.
        let tears = [
            (Tear::DropAll, 0),
            (Tear::TearLast, 0),
            (Tear::TearLast, 1),
            (Tear::Scramble, 0),
            (Tear::Scramble, 1),
            (Tear::Scramble, 2),
        ];
        for (tear, seed) in tears {
            std::fs::write(sidecar(dir.path()), &base_sidecar).unwrap();
            let disk = PowerCutDisk::from_image(base.clone(), growth * 8 + seed);
            disk.schedule_cut(CutAt::Growth(growth), tear);
            let broker = start(dir.path(), &disk, 1).await.unwrap();
            let c = Client::connect(&broker.url()).await.unwrap();
            c.confirm_select().await.unwrap();
            let confirmed = publish_large(&c, COUNT).await;
            assert!(disk.stats().lost, "growth {growth} came");
            c.close().await;
            stop(broker).await;

            let disk = PowerCutDisk::from_image(disk.image(), growth);
            let broker = start(dir.path(), &disk, 1).await.unwrap();
            let c = Client::connect(&broker.url()).await.unwrap();
            let count = stored(&c, QUEUE).await;
            let mut sub = c.consume(QUEUE, 0).await.unwrap();
            let mut seen = std::collections::BTreeSet::new();
            for _ in 0..count {
                let d = common::next(&mut sub).await;
                let id = model::id_of(&d.message.body).expect("one of ours");
                assert!(
                    d.message.body[..] == large_body(id)[..],
                    "message {id} whole"
                );
                assert!(seen.insert(id), "message {id} once");
            }
            for id in &confirmed {
                assert!(
                    seen.contains(id),
                    "growth cut {growth} ({tear:?}): confirmed {id} lost"
                );
            }
            c.close().await;
            stop(broker).await;
            cuts += 1;
        }
    }
    println!("file growth: {cuts} cuts at the {growths} growths of one workload");
}
