//! A damaged data file — a flipped bit, a truncation — makes the broker refuse to start
//! with an error naming the file, and `broker check` fail the same way; it never serves a
//! shorter queue or a changed body. A clean data directory passes `broker check`. A bit
//! flipped in the last commit's pages after a `kill -9` (which redb's recovery cannot
//! tell from a commit the crash tore) is caught by the commit counter's sidecar.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use broker::store::{DB_FILE, sidecar_path};
use broker::{Client, Config, QueueOptions};
use common::{next, persistent};

const MESSAGES: u64 = 60;

fn body(i: u64) -> String {
    format!("{:~<700}", format!("corruption-body-{i}-"))
}

/// A data directory holding `orders` (deeper than its in-memory limit) with `MESSAGES`
/// messages, cleanly shut down.
async fn clean_data_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let broker = common::start_on(dir.path()).await;
    let c = Client::connect(&broker.url()).await.unwrap();
    let mut options = QueueOptions::durable();
    options
        .arguments
        .insert("max_in_memory_length".into(), 10.into());
    c.declare_queue("orders", options).await.unwrap();
    c.confirm_select().await.unwrap();
    for i in 0..MESSAGES {
        c.publish(persistent("orders", &body(i)), false)
            .await
            .unwrap();
    }
    c.close().await;
    broker.shutdown().await;
    dir
}

/// `broker check --data-dir DIR`: success, stdout, stderr.
fn check(dir: &Path) -> (bool, String, String) {
    let out = Command::new(common::bin())
        .args(["check", "--data-dir"])
        .arg(dir)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// A copy of `dir`'s database with `damage` done to its bytes (and of its commit
/// counter's sidecar).
fn damaged_copy(dir: &Path, damage: impl FnOnce(&mut Vec<u8>)) -> (tempfile::TempDir, PathBuf) {
    let mut file = std::fs::read(dir.join(DB_FILE)).unwrap();
    damage(&mut file);
    let copy = tempfile::tempdir().unwrap();
    let path = copy.path().join(DB_FILE);
    std::fs::write(&path, file).unwrap();
    std::fs::copy(sidecar_path(&dir.join(DB_FILE)), sidecar_path(&path)).unwrap();
    (copy, path)
}

/// What a broker on `dir` does: refuses to start (the error), or serves `orders` whole.
async fn start_or_serve_everything(dir: &Path) -> Result<(), String> {
    let mut config = Config::new(dir);
    config.listen = "127.0.0.1:0".parse().unwrap();
    let broker = broker::Broker::start(config)
        .await
        .map_err(|e| e.to_string())?;
    let c = Client::connect(&broker.url()).await.unwrap();
    let info = c.queue_info("orders").await.unwrap();
    assert_eq!(
        info.ready, MESSAGES,
        "a started broker serves the whole queue"
    );
    let mut sub = c.consume("orders", 0).await.unwrap();
    for i in 0..MESSAGES {
        let d = next(&mut sub).await;
        assert_eq!(common::body(&d), body(i), "bodies unchanged, in order");
    }
    c.close().await;
    broker.shutdown().await;
    Ok(())
}

fn offset_of(file: &[u8], needle: &str) -> usize {
    file.windows(needle.len())
        .position(|w| w == needle.as_bytes())
        .expect("the body is in the file")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_clean_data_dir_passes_check() {
    let dir = clean_data_dir().await;
    let (ok, stdout, stderr) = check(dir.path());
    assert!(ok, "{stdout}{stderr}");
    assert!(stdout.contains("shut down cleanly"), "{stdout}");
    assert!(
        stdout.contains(&format!("messages {MESSAGES},")),
        "every message decoded: {stdout}"
    );
    assert!(stdout.contains("queues 1,"), "{stdout}");
    // The check changed nothing: the broker still serves everything.
    start_or_serve_everything(dir.path()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flipped_bit_in_stored_data_stops_the_start_and_fails_check() {
    let dir = clean_data_dir().await;
    let file = std::fs::read(dir.path().join(DB_FILE)).unwrap();
    // In bodies (one held in memory, paged-out ones), in message metadata, in the
    // B-tree pages around them.
    let mut offsets = Vec::new();
    for i in [0, 5, 31, MESSAGES - 1] {
        let at = offset_of(&file, &body(i));
        offsets.extend([at + 200, at.saturating_sub(40), at + 650]);
    }
    for (n, at) in offsets.into_iter().enumerate() {
        let (copy, path) = damaged_copy(dir.path(), |f| f[at] ^= 1 << (n % 8));
        let err = start_or_serve_everything(copy.path())
            .await
            .expect_err("a flip in live data is refused");
        let name = path.display().to_string();
        assert!(err.contains(&name), "the error names the file: {err}");
        let (ok, stdout, stderr) = check(copy.path());
        assert!(!ok, "check fails on a flip at {at}: {stdout}");
        assert!(stderr.contains(&name), "check names the file: {stderr}");
    }
}

/// Anywhere in the file: a flip is refused (naming the file), or it hit bytes nothing
/// reads (free space, padding) and everything is served unchanged. `broker check` agrees
/// with the broker either way.
#[tokio::test(flavor = "multi_thread")]
async fn a_flipped_bit_anywhere_is_refused_or_harmless() {
    let dir = clean_data_dir().await;
    let len = std::fs::metadata(dir.path().join(DB_FILE)).unwrap().len() as usize;
    let mut rng = fastrand::Rng::with_seed(15);
    let mut offsets: Vec<usize> = vec![0, 9, 64, 200, 4096, len / 2, len - 1];
    offsets.extend((0..17).map(|_| rng.usize(..len)));
    let (mut refused, mut harmless) = (0, 0);
    for at in offsets {
        let bit = rng.u8(..8);
        let (copy, path) = damaged_copy(dir.path(), |f| f[at] ^= 1 << bit);
        let (checked, stdout, stderr) = check(copy.path());
        match start_or_serve_everything(copy.path()).await {
            Err(e) => {
                refused += 1;
                assert!(e.contains(&path.display().to_string()), "offset {at}: {e}");
                assert!(
                    !checked,
                    "offset {at}: the broker refused, check passed: {stdout}"
                );
            }
            Ok(()) => {
                harmless += 1;
                assert!(
                    checked,
                    "offset {at}: the broker served it, check failed: {stderr}"
                );
            }
        }
    }
    println!("flipped bits: {refused} refused, {harmless} in bytes nothing reads");
    assert!(refused > 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_truncated_file_stops_the_start_and_fails_check() {
    let dir = clean_data_dir().await;
    let len = std::fs::metadata(dir.path().join(DB_FILE)).unwrap().len() as usize;
    // (Not to 0 bytes: an empty file is what a first start that crashed at once leaves,
    // and redb initialises it as a new database.)
    for keep in [len - 1, len - 4096, len / 2, 8192, 600] {
        let (copy, path) = damaged_copy(dir.path(), |f| f.truncate(keep));
        let err = start_or_serve_everything(copy.path())
            .await
            .expect_err("a truncated file is refused");
        let name = path.display().to_string();
        assert!(err.contains(&name), "truncated to {keep}: {err}");
        let (ok, _, stderr) = check(copy.path());
        assert!(!ok, "check fails when truncated to {keep}");
        assert!(stderr.contains(&name), "{stderr}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn check_refuses_a_data_dir_a_running_broker_has_open() {
    let dir = clean_data_dir().await;
    let broker = common::start_on(dir.path()).await;
    let (ok, _, stderr) = check(dir.path());
    assert!(!ok);
    assert!(stderr.contains("open in a running broker"), "{stderr}");
    broker.shutdown().await;
    let (ok, stdout, stderr) = check(dir.path());
    assert!(ok, "{stdout}{stderr}");
}

/// The binary, too: `broker serve` on a damaged file exits with status 1 and the file
/// named, before listening.
#[tokio::test(flavor = "multi_thread")]
async fn serve_exits_naming_the_damaged_file() {
    let dir = clean_data_dir().await;
    let file = std::fs::read(dir.path().join(DB_FILE)).unwrap();
    let at = offset_of(&file, &body(3)) + 100;
    let (copy, path) = damaged_copy(dir.path(), |f| f[at] ^= 0x10);
    let out = Command::new(common::bin())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--http",
            "off",
            "--data-dir",
        ])
        .arg(copy.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(out.stdout.is_empty(), "never listened");
    assert!(stderr.contains(&path.display().to_string()), "{stderr}");
}

/// A data directory whose broker (the binary) was killed with `kill -9` after `MESSAGES`
/// confirmed publishes to `orders`, one at a time: the last message is alone in the last
/// commit, and the file needs recovery.
async fn crashed_data_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let process = common::BrokerProcess::spawn(dir.path());
    let c = Client::connect(&process.url).await.unwrap();
    c.declare_queue("orders", QueueOptions::durable())
        .await
        .unwrap();
    c.confirm_select().await.unwrap();
    for i in 0..MESSAGES {
        c.publish(persistent("orders", &body(i)), false)
            .await
            .unwrap();
    }
    process.kill9();
    dir
}

/// How many messages a broker on `dir` serves in `orders` (it must start).
async fn served(dir: &Path) -> u64 {
    let broker = common::start_on(dir).await;
    let c = Client::connect(&broker.url()).await.unwrap();
    let ready = c.queue_info("orders").await.unwrap().ready;
    c.close().await;
    broker.shutdown().await;
    ready
}

/// redb's recovery after a crash falls back to the commit before the last when the last
/// does not verify — right for a commit the crash tore (never confirmed), wrong for one
/// damaged after the crash: its confirmed message would be gone, silently. The sidecar
/// records the last commit as durable, so the start is refused (naming the data file and
/// the sidecar) and `broker check` fails the same way; the undamaged crashed directory
/// starts and serves everything; with the sidecar deleted the older state is accepted
/// knowingly. The refused starts leave the file unchanged.
#[tokio::test(flavor = "multi_thread")]
async fn a_flip_in_the_last_commit_after_a_crash_is_refused_not_served_shorter() {
    let dir = crashed_data_dir().await;
    let file = std::fs::read(dir.path().join(DB_FILE)).unwrap();
    let at = offset_of(&file, &body(MESSAGES - 1)) + 200;
    let (copy, path) = damaged_copy(dir.path(), |f| f[at] ^= 0x08);
    let sidecar = sidecar_path(&path).display().to_string();
    let name = path.display().to_string();
    let as_crashed = std::fs::read(&path).unwrap();

    let (ok, stdout, stderr) = check(copy.path());
    assert!(!ok, "check fails: {stdout}");
    assert!(stderr.contains("lost confirmed commits"), "{stderr}");
    assert!(
        stderr.contains(&name) && stderr.contains(&sidecar),
        "{stderr}"
    );
    let err = start_or_serve_everything(copy.path())
        .await
        .expect_err("the last confirmed message is missing: refused");
    assert!(err.contains("lost confirmed commits"), "{err}");
    assert!(err.contains(&name) && err.contains(&sidecar), "{err}");
    let refused_again = start_or_serve_everything(copy.path()).await;
    assert!(refused_again.is_err(), "refused on every start");
    assert!(
        std::fs::read(&path).unwrap() == as_crashed,
        "a refused start leaves the file as the crash left it (to restore or examine)"
    );

    // Accepting the older state knowingly: one message short, and the start says why.
    std::fs::remove_file(sidecar_path(&path)).unwrap();
    assert_eq!(served(copy.path()).await, MESSAGES - 1);

    // Without the flip the crashed directory passes and serves everything.
    let (ok, stdout, stderr) = check(dir.path());
    assert!(ok, "{stdout}{stderr}");
    assert!(stdout.contains("not shut down cleanly"), "{stdout}");
    start_or_serve_everything(dir.path()).await.unwrap();
}

/// A data directory from before the sidecar (or with it deleted) starts and serves
/// everything; the broker creates the sidecar, and `broker check` then reports it.
#[tokio::test(flavor = "multi_thread")]
async fn a_missing_sidecar_is_accepted_and_created() {
    let dir = crashed_data_dir().await;
    let sidecar = sidecar_path(&dir.path().join(DB_FILE));
    std::fs::remove_file(&sidecar).unwrap();
    let (ok, stdout, stderr) = check(dir.path());
    assert!(ok, "{stdout}{stderr}");
    assert!(stdout.contains("commit-seq: missing"), "{stdout}");
    start_or_serve_everything(dir.path()).await.unwrap();
    assert!(sidecar.exists(), "created");
    let (ok, stdout, stderr) = check(dir.path());
    assert!(ok, "{stdout}{stderr}");
    assert!(stdout.contains("commit-seq: commit "), "{stdout}");
}
