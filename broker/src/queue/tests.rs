use super::DEFAULT_MAX_IN_MEMORY_LENGTH as PACK_AFTER;
use super::*;
use crate::store::{StoreOp, WriteBatch};
use serde_json::json;

fn queue_with(args: serde_json::Value) -> Queue {
    let arguments = args.as_object().unwrap().clone();
    let policy = QueuePolicy::from_arguments(&arguments, false).unwrap();
    let spec = QueueSpec {
        durable: false,
        exclusive_owner: None,
        auto_delete: false,
        arguments,
    };
    Queue::new("q".into(), 1, spec, policy)
}

fn queue() -> Queue {
    queue_with(json!({}))
}

fn msg(text: &str) -> Arc<Message> {
    Arc::new(Message::text("q", text))
}

fn push(q: &mut Queue, text: &str) -> u64 {
    push_msg(q, Message::text("q", text), 0)
}

fn push_msg(q: &mut Queue, m: Message, now: u64) -> u64 {
    match q.push(Arc::new(m), false, now) {
        Push::Accepted { seq, evicted } => {
            assert!(evicted.is_empty());
            seq
        }
        Push::Rejected => panic!("rejected"),
    }
}

fn deliver(q: &mut Queue, now: u64) -> Option<Dispatch> {
    match q.next_dispatch(now, &|_| true)? {
        Next::Deliver(d) => Some(d),
        Next::Expired(e) => panic!("unexpected expiry of {}", e.seq),
    }
}

fn body(d: &Dispatch) -> &[u8] {
    &d.message.body
}

#[test]
fn fifo_without_consumers_then_delivered_in_order() {
    let mut q = queue();
    for t in ["a", "b", "c"] {
        push(&mut q, t);
    }
    assert!(q.next_dispatch(0, &|_| true).is_none());
    q.add_consumer(Consumer::new(1, "c1".into(), 0, false));
    let got: Vec<_> = std::iter::from_fn(|| deliver(&mut q, 0)).collect();
    assert_eq!(got.iter().map(body).collect::<Vec<_>>(), [b"a", b"b", b"c"]);
    assert_eq!((q.ready_len(), q.unacked_len()), (0, 3));
}

#[test]
fn prefetch_limits_in_flight_and_ack_frees_room() {
    let mut q = queue();
    for i in 0..5 {
        push(&mut q, &i.to_string());
    }
    q.add_consumer(Consumer::new(1, "c".into(), 2, false));
    let first = deliver(&mut q, 0).unwrap();
    deliver(&mut q, 0).unwrap();
    assert!(
        q.next_dispatch(0, &|_| true).is_none(),
        "prefetch 2 reached"
    );
    q.ack(first.seq).unwrap();
    assert!(deliver(&mut q, 0).is_some());
    assert!(q.next_dispatch(0, &|_| true).is_none());
}

#[test]
fn round_robin_between_competing_consumers() {
    let mut q = queue();
    for i in 0..6 {
        push(&mut q, &i.to_string());
    }
    q.add_consumer(Consumer::new(1, "a".into(), 0, false));
    q.add_consumer(Consumer::new(2, "b".into(), 0, false));
    let conns: Vec<_> = std::iter::from_fn(|| deliver(&mut q, 0))
        .map(|d| d.conn)
        .collect();
    assert_eq!(conns, [1, 2, 1, 2, 1, 2]);
}

#[test]
fn immediate_retry_returns_to_original_place_with_count() {
    let mut q = queue();
    for t in ["a", "b", "c"] {
        push(&mut q, t);
    }
    q.add_consumer(Consumer::new(1, "c".into(), 1, false));
    let a = deliver(&mut q, 0).unwrap();
    assert_eq!(a.delivery_count, 1);
    assert!(matches!(
        q.retry(a.seq, Retry::Backoff, 0),
        Some(Retried::Requeued {
            not_before: None,
            ..
        })
    ));
    let again = deliver(&mut q, 0).unwrap();
    assert_eq!((body(&again), again.delivery_count), (&b"a"[..], 2));
}

#[test]
fn removed_consumer_keeps_unacked_until_acked() {
    let mut q = queue();
    push(&mut q, "a");
    q.add_consumer(Consumer::new(1, "c".into(), 0, false));
    let a = deliver(&mut q, 0).unwrap();
    q.remove_consumer(1, "c").unwrap();
    assert_eq!(q.unacked_len(), 1);
    assert!(q.ack(a.seq).is_some());
    assert!(q.ack(a.seq).is_none(), "a second ack finds nothing");
}

#[test]
fn restore_continues_sequence_after_recovered_messages() {
    let mut q = queue();
    let mut e = Entry::new(41, msg("old"), true);
    e.delivery_count = 2;
    q.restore(e, 0, None);
    assert_eq!(push(&mut q, "new"), 42);
    q.add_consumer(Consumer::new(1, "c".into(), 0, false));
    let d = deliver(&mut q, 0).unwrap();
    assert_eq!((d.seq, d.delivery_count), (41, 3));
}

#[test]
fn backoff_delays_then_delivery_limit_exhausts() {
    let mut q = queue_with(json!({"max_deliveries": 3, "retry_backoff": [100, 1000]}));
    push(&mut q, "job");
    q.add_consumer(Consumer::new(1, "c".into(), 0, false));
    let d = deliver(&mut q, 0).unwrap();
    let Some(Retried::Requeued { not_before, .. }) = q.retry(d.seq, Retry::Backoff, 10) else {
        panic!()
    };
    assert_eq!(not_before, Some(110));
    assert!(q.next_dispatch(50, &|_| true).is_none(), "still delayed");
    assert_eq!(q.next_deadline(), Some(110));
    assert!(q.tick(110).is_empty());
    let d = deliver(&mut q, 110).unwrap();
    let Some(Retried::Requeued { not_before, .. }) = q.retry(d.seq, Retry::Backoff, 200) else {
        panic!()
    };
    assert_eq!(not_before, Some(1200), "second delay");
    q.tick(1200);
    let d = deliver(&mut q, 1200).unwrap();
    assert_eq!(d.delivery_count, 3);
    assert!(matches!(
        q.retry(d.seq, Retry::Backoff, 1300),
        Some(Retried::Exhausted(_))
    ));
    assert_eq!(q.ready_len() + q.delayed_len() + q.unacked_len(), 0);
}

#[test]
fn explicit_delay_overrides_backoff() {
    let mut q = queue_with(json!({"retry_backoff": ["1h"]}));
    push(&mut q, "job");
    q.add_consumer(Consumer::new(1, "c".into(), 0, false));
    let d = deliver(&mut q, 0).unwrap();
    let Some(Retried::Requeued { not_before, .. }) = q.retry(d.seq, Retry::After(5), 0) else {
        panic!()
    };
    assert_eq!(not_before, Some(5));
}

#[test]
fn ttl_smaller_of_queue_and_message_wins() {
    let mut q = queue_with(json!({"message_ttl": 1000}));
    push_msg(&mut q, Message::text("q", "queue-ttl"), 0);
    let mut short = Message::text("q", "own-ttl");
    short.properties.expiration_ms = Some(100);
    push_msg(&mut q, short, 0);
    assert_eq!(q.next_deadline(), Some(100));
    let expired = q.tick(100);
    assert_eq!(expired.len(), 1);
    assert_eq!(&expired[0].message.body[..], b"own-ttl");
    let expired = q.tick(1000);
    assert_eq!(&expired[0].message.body[..], b"queue-ttl");
    assert_eq!(q.ready_len(), 0);
}

#[test]
fn expired_head_is_not_delivered() {
    let mut q = queue_with(json!({"message_ttl": 10}));
    push(&mut q, "stale");
    q.add_consumer(Consumer::new(1, "c".into(), 0, false));
    assert!(matches!(
        q.next_dispatch(50, &|_| true),
        Some(Next::Expired(_))
    ));
}

#[test]
fn priorities_first_fifo_within() {
    let mut q = queue_with(json!({"max_priority": 5}));
    for (text, p) in [
        ("low1", 0),
        ("high1", 9),
        ("mid", 3),
        ("high2", 5),
        ("low2", 0),
    ] {
        let mut m = Message::text("q", text);
        m.properties.priority = Some(p);
        push_msg(&mut q, m, 0);
    }
    q.add_consumer(Consumer::new(1, "c".into(), 0, false));
    let order: Vec<_> = std::iter::from_fn(|| deliver(&mut q, 0))
        .map(|d| String::from_utf8(d.message.body.to_vec()).unwrap())
        .collect();
    assert_eq!(
        order,
        ["high1", "high2", "mid", "low1", "low2"],
        "9 is capped to 5"
    );
}

#[test]
fn overflow_drop_head_evicts_oldest_and_reject_publish_refuses() {
    let mut q = queue_with(json!({"max_length": 2}));
    push(&mut q, "a");
    push(&mut q, "b");
    let Push::Accepted { evicted, .. } = q.push(msg("c"), false, 0) else {
        panic!()
    };
    assert_eq!(&evicted[0].message.body[..], b"a");
    assert_eq!(q.ready_len(), 2);

    let mut q = queue_with(json!({"max_length_bytes": 5, "overflow": "reject_publish"}));
    push(&mut q, "abc");
    assert!(matches!(q.push(msg("def"), false, 0), Push::Rejected));
    push(&mut q, "de");
}

#[test]
fn delayed_publish_waits_until_due() {
    let mut q = queue();
    let mut m = Message::text("q", "later");
    m.properties.delay_ms = Some(500);
    push_msg(&mut q, m, 1000);
    push(&mut q, "now");
    q.add_consumer(Consumer::new(1, "c".into(), 0, false));
    assert_eq!(body(&deliver(&mut q, 1000).unwrap()), b"now");
    assert!(q.next_dispatch(1400, &|_| true).is_none());
    q.tick(1500);
    assert_eq!(body(&deliver(&mut q, 1500).unwrap()), b"later");
}

/// A deep queue packs its ready messages; they come back equal, in order, through every
/// way out (peek, dispatch, expiry, purge), and a message another queue shares is not packed.
#[test]
fn deep_queues_pack_ready_messages_losslessly() {
    let mut q = queue_with(json!({"max_priority": 9}));
    let sample = |i: usize| {
        let mut m = Message::text(format!("key.{i}"), format!("body {i}"));
        m.exchange = "x".into();
        m.headers
            .insert("n".into(), json!([i, 1.5, {"s": "\"q\""}]));
        m.properties.priority = Some((i % 3) as u8);
        m.properties.message_id = Some(format!("m{i}"));
        if i.is_multiple_of(5) {
            m.body = bytes::Bytes::from(vec![0xff, i as u8]);
        }
        m
    };
    let total = PACK_AFTER + 500;
    for i in 0..total {
        push_msg(&mut q, sample(i), 0);
    }
    // As the router pushes: it keeps its own reference while pushing; another queue holds one.
    let shared = msg("shared");
    let held_elsewhere = shared.clone();
    q.push(shared.clone(), false, 0);
    drop(shared);
    let packed = q
        .ready
        .values()
        .filter(|p| matches!(p.held, Held::Packed(_)))
        .count();
    assert_eq!(
        packed, 500,
        "only messages past the threshold, not the shared one"
    );

    // Delivery order: priority 2, then 1, then 0, each oldest first.
    let mut expected: Vec<usize> = (0..total).collect();
    expected.sort_by_key(|i| (std::cmp::Reverse(i % 3), *i));
    let peeked = q.peek(total + 1);
    assert_eq!(peeked.len(), total + 1);
    for (entry, i) in peeked.iter().zip(&expected) {
        assert_eq!(*entry.message, sample(*i));
    }
    q.add_consumer(Consumer::new(1, "c1".into(), 0, false));
    for i in &expected {
        let d = deliver(&mut q, 0).unwrap();
        assert_eq!(*d.message, sample(*i));
    }
    let last = deliver(&mut q, 0).unwrap();
    assert!(Arc::ptr_eq(&last.message, &held_elsewhere));
    assert_eq!(q.ready_len(), 0);

    // Expiry hands back the message too; purge needs none.
    let mut q = queue_with(json!({"message_ttl": 10}));
    for i in 0..PACK_AFTER + 2 {
        push_msg(&mut q, sample(i), 0);
    }
    let expired = q.tick(100);
    assert_eq!(expired.len(), PACK_AFTER + 2);
    assert_eq!(*expired[PACK_AFTER + 1].message, sample(PACK_AFTER + 1));
    let mut q = queue();
    for i in 0..PACK_AFTER + 2 {
        push_msg(&mut q, sample(i), 0);
    }
    let purged = q.purge();
    assert_eq!(purged.len(), PACK_AFTER + 2);
    assert_eq!(purged[PACK_AFTER + 1].seq, PACK_AFTER as u64 + 2);
}

/// Stores `messages` of queue `id` and waits for the commit.
fn store_and_commit(writer: &crate::store::StoreWriter, id: u64, messages: &[(u64, Arc<Message>)]) {
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    writer.submit(WriteBatch {
        ops: messages
            .iter()
            .map(|(seq, message)| StoreOp::PutMessage {
                queue: id,
                seq: *seq,
                enqueued_at: 0,
                message: message.clone(),
            })
            .collect(),
        completions: vec![Box::new(move |result| done_tx.send(result).unwrap())],
    });
    done_rx.recv().unwrap().unwrap();
}

fn numbered(i: usize) -> Message {
    let mut m = Message::text(format!("key.{i}"), format!("body {i}"));
    m.properties.message_id = Some(format!("m{i}"));
    m.properties.priority = Some((i % 2) as u8);
    m
}

/// A stored queue past `max_in_memory_length` drops the bodies of committed messages and
/// reads them back, equal and in order, through every way out; recovered ones past the
/// limit start on disk.
#[test]
fn deep_stored_queues_page_bodies_out_to_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let (_, writer) = crate::store::open(dir.path(), |_| usize::MAX).unwrap();
    let mut q = queue_with(json!({"max_in_memory_length": 10, "max_priority": 1}));
    q.enable_paging(writer.reader());
    let mut stored = Vec::new();
    for i in 0..100 {
        let message = Arc::new(numbered(i));
        let Push::Accepted { seq, .. } = q.push(message.clone(), true, 0) else {
            panic!("rejected")
        };
        stored.push((seq, message));
    }
    // Nothing leaves memory before its batch commits.
    assert_eq!(q.paged_out_len(), 0);
    store_and_commit(&writer, q.id, &stored);
    let message = Arc::new(numbered(100));
    let Push::Accepted { seq, .. } = q.push(message.clone(), true, 0) else {
        panic!("rejected")
    };
    stored.push((seq, message));
    assert_eq!(q.paged_out_len(), 90, "all committed past the first 10");
    store_and_commit(&writer, q.id, &stored[100..]);

    // Delivery order: priority 1 first, each oldest first.
    let mut expected: Vec<usize> = (0..=100).collect();
    expected.sort_by_key(|i| (std::cmp::Reverse(i % 2), *i));
    let peeked: Vec<Message> = q.peek(200).iter().map(|e| (*e.message).clone()).collect();
    let want: Vec<Message> = expected.iter().map(|i| numbered(*i)).collect();
    assert_eq!(peeked, want);
    assert_eq!(q.paged_out_len(), 90, "peeking reads without keeping");

    let taken = q.take_ready_where(|e| e.message.properties.message_id.as_deref() == Some("m99"));
    assert_eq!(taken.len(), 1);
    assert_eq!(*taken[0].message, numbered(99));
    q.add_consumer(Consumer::new(1, "c".into(), 0, false));
    for i in expected.iter().filter(|i| **i != 99) {
        let d = deliver(&mut q, 0).unwrap();
        assert_eq!(*d.message, numbered(*i));
    }
    assert_eq!((q.ready_len(), q.paged_out_len()), (0, 0));

    // A restart: past the limit, recovered messages start on disk.
    let mut q = queue_with(json!({"max_in_memory_length": 10, "max_priority": 1}));
    q.enable_paging(writer.reader());
    for (seq, message) in &stored {
        q.restore(Entry::new(*seq, message.clone(), true), 0, None);
    }
    assert_eq!(q.paged_out_len(), 91);
    let purged = q.purge();
    assert_eq!(purged.len(), 101);
    assert!(purged.iter().all(|r| r.stored));
    writer.close();
}

/// Recovery past the in-memory limit reads only placements: priorities, expiry and sizes
/// still apply, and bodies come back from disk when the messages leave.
#[test]
fn messages_recovered_on_disk_keep_their_place_and_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let (_, writer) = crate::store::open(dir.path(), |_| usize::MAX).unwrap();
    let record = crate::store::QueueRecord {
        id: 1,
        name: "q".into(),
        auto_delete: false,
        arguments: Headers::new(),
        declared_by: None,
    };
    let stored: Vec<(u64, Arc<Message>)> = (0..6)
        .map(|i| {
            let mut m = numbered(i);
            m.properties.expiration_ms = (i >= 4).then_some(100);
            (i as u64 + 1, Arc::new(m))
        })
        .collect();
    writer.submit(WriteBatch {
        ops: vec![StoreOp::PutQueue(record)],
        completions: Vec::new(),
    });
    store_and_commit(&writer, 1, &stored);
    writer.close();

    let (recovered, writer) = crate::store::open(dir.path(), |_| 2).unwrap();
    let mut q = queue_with(json!({"max_priority": 1}));
    q.enable_paging(writer.reader());
    for m in recovered.queues.into_iter().next().unwrap().messages {
        match m.message {
            crate::store::Recalled::InMemory(message) => {
                q.restore(Entry::new(m.seq, message, true), 0, None)
            }
            crate::store::Recalled::OnDisk(placement) => {
                q.restore_on_disk(m.seq, placement, 0, m.delivery_count)
            }
        }
    }
    assert_eq!((q.ready_len(), q.paged_out_len()), (6, 4));
    // Priority 1 (odd) first, then 0, each oldest first.
    let order: Vec<Message> = q.peek(10).iter().map(|e| (*e.message).clone()).collect();
    let want: Vec<Message> = [1, 3, 5, 0, 2, 4]
        .iter()
        .map(|i| stored[*i].1.as_ref().clone())
        .collect();
    assert_eq!(order, want);
    let expired = q.tick(100);
    let expired: Vec<Message> = expired.iter().map(|e| (*e.message).clone()).collect();
    assert_eq!(
        expired,
        [stored[5].1.as_ref().clone(), stored[4].1.as_ref().clone()]
    );
    // Reading the first expired one read the rest of the run after it too (seq 3).
    assert_eq!((q.ready_len(), q.paged_out_len()), (4, 1));
    writer.close();
}

#[test]
fn expires_counts_from_the_last_use_while_there_are_no_consumers() {
    let mut q = queue_with(json!({"expires": 100}));
    q.touch(1_000);
    assert_eq!(q.next_deadline(), Some(1_100));
    assert!(!q.expired_unused(1_099));
    assert!(q.expired_unused(1_100));
    // A consumer keeps it; its leaving starts the period again.
    q.add_consumer(Consumer::new(1, "c1".into(), 0, false));
    assert!(!q.expired_unused(5_000));
    assert_eq!(q.next_deadline(), None);
    q.remove_consumer(1, "c1");
    q.touch(5_000);
    assert!(!q.expired_unused(5_099));
    assert!(q.expired_unused(5_100));
    // Without `expires` a queue never expires.
    assert!(!queue().expired_unused(u64::MAX));
}
