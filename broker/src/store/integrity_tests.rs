//! What redb detects by itself in a damaged file, and what the store adds.

use super::commit_seq::read_sidecar;
use super::*;

/// A cleanly closed database holding `count` messages of queue 1 with bodies `body-<i>`
/// padded to 600 bytes (several pages of them); returns the file's bytes.
fn cleanly_closed_store(dir: &Path, count: u64) -> Vec<u8> {
    let (_, writer) = open(dir, |_| usize::MAX).unwrap();
    let mut ops = vec![StoreOp::PutQueue(QueueRecord {
        id: 1,
        name: "q".into(),
        auto_delete: false,
        arguments: Headers::new(),
        declared_by: None,
    })];
    for seq in 0..count {
        ops.push(StoreOp::PutMessage {
            queue: 1,
            seq,
            enqueued_at: 1,
            message: Arc::new(Message::text("q", body(seq))),
        });
    }
    writer.submit(WriteBatch {
        ops,
        completions: Vec::new(),
    });
    writer.close();
    std::fs::read(dir.join(DB_FILE)).unwrap()
}

fn body(seq: u64) -> String {
    format!("{:-<600}", format!("body-{seq}-"))
}

fn offset_of(file: &[u8], needle: &[u8]) -> usize {
    file.windows(needle.len())
        .position(|w| w == needle)
        .expect("the body is in the file")
}

/// redb alone (a plain open, as the store did before) serves a flipped bit in a message
/// body of a cleanly closed file: its page checksums are only verified during recovery.
/// The store's open checks every page and refuses the file, naming it; and the message's
/// own checksum refuses the value where redb serves it (a read while the broker runs).
#[test]
fn a_flipped_bit_in_a_body_is_served_by_plain_redb_and_refused_by_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let mut file = cleanly_closed_store(dir.path(), 40);
    let at = offset_of(&file, body(17).as_bytes()) + 300;
    file[at] ^= 0x04;
    let path = dir.path().join(DB_FILE);
    std::fs::write(&path, &file).unwrap();

    {
        let db = Database::open(&path).unwrap();
        let txn = db.begin_read().unwrap();
        let table = txn.open_table(MESSAGES).unwrap();
        let value = table.get((1, 17)).unwrap().unwrap();
        let served = value.value();
        let mut flipped = body(17).into_bytes();
        flipped[300] ^= 0x04;
        assert!(
            served.windows(flipped.len()).any(|w| w == flipped),
            "redb served the flipped body"
        );
        let err = decode_entry(served).expect_err("the entry checksum refuses it");
        assert!(err.contains("checksum"), "{err}");
    }

    let err = open(dir.path(), |_| usize::MAX).err().expect("refused");
    let text = err.to_string();
    assert!(text.contains(&path.display().to_string()), "{text}");
}

/// A truncated file is refused, naming it.
#[test]
fn a_truncated_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = cleanly_closed_store(dir.path(), 40);
    let path = dir.path().join(DB_FILE);
    for keep in [file.len() / 2, file.len() - 4096, 4096, 100] {
        std::fs::write(&path, &file[..keep]).unwrap();
        let err = open(dir.path(), |_| usize::MAX).err();
        let text = err.map(|e| e.to_string()).unwrap_or_default();
        assert!(
            text.contains(&path.display().to_string()),
            "truncated to {keep} of {} bytes: `{text}`",
            file.len()
        );
    }
}

/// After a crash, redb verifies the last commit and, when it does not verify (a commit
/// the crash tore; or one damaged since), recovers the commit before it: to redb a flip
/// in the last commit's pages after a crash looks exactly like a torn commit. The commit
/// counter's sidecar records that commit as durable, so the store refuses the recovered
/// state, naming the file, both numbers and the sidecar; with the sidecar deleted (the
/// older state accepted knowingly) it opens, and says it fell back.
#[test]
fn a_last_commit_damaged_after_a_crash_is_refused_not_served_shorter() {
    use super::power_cut::{PowerCutDisk, Tear};
    let dir = tempfile::tempdir().unwrap();
    let put = |seq| StoreOp::PutMessage {
        queue: 1,
        seq,
        enqueued_at: 1,
        message: Arc::new(Message::text("q", body(seq))),
    };
    let committed = |writer: &StoreWriter, ops| {
        let (tx, rx) = std::sync::mpsc::channel();
        writer.submit(WriteBatch {
            ops,
            completions: vec![Box::new(move |r| tx.send(r).unwrap())],
        });
        rx.recv().unwrap().unwrap();
    };
    let disk = PowerCutDisk::new(1);
    let (recovered, writer) =
        open_with(dir.path(), Some(Box::new(disk.backend())), |_| usize::MAX).unwrap();
    assert!(!recovered.fell_back);
    let queue = StoreOp::PutQueue(QueueRecord {
        id: 1,
        name: "q".into(),
        auto_delete: false,
        arguments: Headers::new(),
        declared_by: None,
    });
    committed(&writer, vec![queue, put(1)]);
    committed(&writer, vec![put(2)]);
    disk.cut_now(Tear::DropAll);
    drop(writer);

    // Recovered whole after the crash: no fallback.
    let image = disk.image();
    let disk = PowerCutDisk::from_image(image.clone(), 2);
    let (recovered, writer) =
        open_with(dir.path(), Some(Box::new(disk.backend())), |_| usize::MAX).unwrap();
    assert!(!recovered.fell_back);
    assert_eq!(recovered.queues[0].messages.len(), 2);
    writer.close();

    // The last commit damaged after the crash: the recovery falls back to the one before
    // it, which the sidecar says is not the last durable one.
    let mut damaged = image;
    let at = offset_of(&damaged, body(2).as_bytes()) + 300;
    damaged[at] ^= 4;
    let disk = PowerCutDisk::from_image(damaged.clone(), 3);
    let err = open_with(dir.path(), Some(Box::new(disk.backend())), |_| usize::MAX)
        .err()
        .expect("a recovered state older than the sidecar's is refused");
    let db = dir.path().join(DB_FILE);
    let sidecar = sidecar_path(&db);
    match &err {
        OpenError::LostCommits {
            path,
            sidecar: named,
            recovered: 1,
            recorded: 2,
        } => {
            assert_eq!(path, &db);
            assert_eq!(named, &sidecar);
        }
        other => panic!("not a lost commit: {other}"),
    }
    let text = err.to_string();
    assert!(text.contains(&db.display().to_string()), "{text}");
    assert!(text.contains(&sidecar.display().to_string()), "{text}");

    // The sidecar deleted: the older state, accepted knowingly; the fallback is reported.
    std::fs::remove_file(&sidecar).unwrap();
    let disk = PowerCutDisk::from_image(damaged, 4);
    let (recovered, writer) =
        open_with(dir.path(), Some(Box::new(disk.backend())), |_| usize::MAX).unwrap();
    assert!(recovered.fell_back, "the fallback is reported");
    assert_eq!(recovered.queues[0].messages.len(), 1);
    assert_eq!(recovered.commit_seq, 1);
    writer.close();
    assert_eq!(
        read_sidecar(&db).unwrap(),
        Sidecar::Recorded(1),
        "recreated"
    );
}

/// Each commit of the writer counts, and the sidecar follows it. A missing sidecar (a data
/// dir from before it) and a garbled one (torn by a power cut) are accepted and rewritten;
/// so is a sidecar next to a database that had no counter before (another file's). One
/// ahead of the database is refused.
#[test]
fn the_sidecar_follows_the_commits_and_only_one_ahead_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join(DB_FILE);
    let sidecar = sidecar_path(&db);
    cleanly_closed_store(dir.path(), 3);
    assert_eq!(
        read_sidecar(&db).unwrap(),
        Sidecar::Recorded(1),
        "one commit"
    );
    let reopen = || {
        let (recovered, writer) = open(dir.path(), |_| usize::MAX)?;
        writer.close();
        Ok::<_, OpenError>(recovered)
    };

    std::fs::remove_file(&sidecar).unwrap();
    let recovered = reopen().expect("a missing sidecar is accepted");
    assert_eq!(
        (recovered.commit_seq, recovered.sidecar),
        (1, Sidecar::Missing)
    );
    assert_eq!(read_sidecar(&db).unwrap(), Sidecar::Recorded(1), "created");

    std::fs::write(&sidecar, b"torn").unwrap();
    let recovered = reopen().expect("a garbled sidecar is accepted");
    assert_eq!(recovered.sidecar, Sidecar::Garbled);
    assert_eq!(
        read_sidecar(&db).unwrap(),
        Sidecar::Recorded(1),
        "rewritten"
    );

    // One commit ahead of the database: refused, and left as it was.
    let ahead = tempfile::tempdir().unwrap();
    cleanly_closed_store(ahead.path(), 3);
    let (_, writer) = open(ahead.path(), |_| usize::MAX).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    writer.submit(WriteBatch {
        ops: vec![StoreOp::DeleteMessage {
            queue: 1,
            seq: 0,
            state: false,
        }],
        completions: vec![Box::new(move |r| tx.send(r).unwrap())],
    });
    rx.recv().unwrap().unwrap();
    writer.close();
    let ahead_sidecar = sidecar_path(&ahead.path().join(DB_FILE));
    assert_eq!(
        read_sidecar(&ahead.path().join(DB_FILE)).unwrap(),
        Sidecar::Recorded(2)
    );
    std::fs::copy(&ahead_sidecar, &sidecar).unwrap();
    let err = reopen().expect_err("a sidecar ahead is refused");
    assert!(
        matches!(
            err,
            OpenError::LostCommits {
                recovered: 1,
                recorded: 2,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(
        read_sidecar(&db).unwrap(),
        Sidecar::Recorded(2),
        "left as it was"
    );

    // A database without a counter before this open (here: a new file) makes the
    // sidecar another file's.
    std::fs::remove_file(&db).unwrap();
    let recovered = reopen().expect("a new database file");
    assert_eq!(
        (recovered.commit_seq, recovered.sidecar),
        (0, Sidecar::Recorded(2))
    );
    assert_eq!(
        read_sidecar(&db).unwrap(),
        Sidecar::Recorded(0),
        "rewritten"
    );
}
