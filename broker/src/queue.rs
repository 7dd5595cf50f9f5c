//! One queue's state machine: ready messages in order, unacked messages per consumer,
//! consumers served round-robin within their prefetch windows.
//!
//! Pure logic, no I/O: the router applies the results (frames, store operations).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::message::{Headers, Message};

/// Identifies a client connection.
pub type ConnId = u64;

/// A message in a queue.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Position in the queue; also the message's key in the store.
    pub seq: u64,
    pub message: Arc<Message>,
    /// Deliveries so far.
    pub delivery_count: u32,
    /// The message is in the store (persistent message in a durable queue).
    pub stored: bool,
    /// The store also holds a delivery count for it.
    pub count_stored: bool,
}

impl Entry {
    pub fn new(seq: u64, message: Arc<Message>, stored: bool) -> Self {
        Entry {
            seq,
            message,
            delivery_count: 0,
            stored,
            count_stored: false,
        }
    }
}

/// A subscription to a queue.
#[derive(Debug, Clone)]
pub struct Consumer {
    pub conn: ConnId,
    pub tag: Arc<str>,
    /// Most unacked deliveries at once; 0 is unlimited.
    pub prefetch: u32,
    pub auto_ack: bool,
    in_flight: u32,
}

impl Consumer {
    pub fn new(conn: ConnId, tag: Arc<str>, prefetch: u32, auto_ack: bool) -> Self {
        Consumer {
            conn,
            tag,
            prefetch,
            auto_ack,
            in_flight: 0,
        }
    }

    fn has_room(&self) -> bool {
        self.prefetch == 0 || self.in_flight < self.prefetch
    }
}

/// A message handed to a consumer.
#[derive(Debug, Clone)]
pub struct Dispatch {
    pub conn: ConnId,
    pub consumer_tag: Arc<str>,
    pub auto_ack: bool,
    pub seq: u64,
    pub message: Arc<Message>,
    pub delivery_count: u32,
}

#[derive(Debug)]
struct Unacked {
    entry: Entry,
    conn: ConnId,
    consumer_tag: Arc<str>,
}

/// Declared properties of a queue.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueSpec {
    pub durable: bool,
    /// The connection that owns an exclusive queue.
    pub exclusive_owner: Option<ConnId>,
    pub auto_delete: bool,
    pub arguments: Headers,
}

#[derive(Debug)]
pub struct Queue {
    pub name: Arc<str>,
    /// The queue's key prefix in the store.
    pub id: u64,
    pub spec: QueueSpec,
    next_seq: u64,
    /// Ready messages; the smallest sequence is delivered first, so a requeued message
    /// returns to its original place at the head.
    ready: BTreeMap<u64, Entry>,
    unacked: HashMap<u64, Unacked>,
    consumers: Vec<Consumer>,
    /// Index of the consumer to try first on the next dispatch (round-robin).
    next_consumer: usize,
}

impl Queue {
    pub fn new(name: Arc<str>, id: u64, spec: QueueSpec) -> Self {
        Queue {
            name,
            id,
            spec,
            next_seq: 1,
            ready: BTreeMap::new(),
            unacked: HashMap::new(),
            consumers: Vec::new(),
            next_consumer: 0,
        }
    }

    /// Appends a new message; returns its sequence.
    pub fn push(&mut self, message: Arc<Message>, stored: bool) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.ready.insert(seq, Entry::new(seq, message, stored));
        seq
    }

    /// Puts back a message recovered from the store.
    pub fn restore(&mut self, mut entry: Entry) {
        self.next_seq = self.next_seq.max(entry.seq + 1);
        entry.count_stored = entry.delivery_count > 0;
        self.ready.insert(entry.seq, entry);
    }

    pub fn ready_len(&self) -> usize {
        self.ready.len()
    }

    pub fn unacked_len(&self) -> usize {
        self.unacked.len()
    }

    pub fn consumer_count(&self) -> usize {
        self.consumers.len()
    }

    pub fn consumers(&self) -> &[Consumer] {
        &self.consumers
    }

    pub fn add_consumer(&mut self, consumer: Consumer) {
        self.consumers.push(consumer);
    }

    /// Removes a consumer. Its unacked messages stay unacked until acked or until its
    /// connection closes (as in AMQP).
    pub fn remove_consumer(&mut self, conn: ConnId, tag: &str) -> Option<Consumer> {
        let index = self
            .consumers
            .iter()
            .position(|c| c.conn == conn && &*c.tag == tag)?;
        if index < self.next_consumer {
            self.next_consumer -= 1;
        }
        Some(self.consumers.remove(index))
    }

    /// Hands the next ready message to the next consumer with room, if any.
    pub fn next_dispatch(&mut self) -> Option<Dispatch> {
        if self.ready.is_empty() || self.consumers.is_empty() {
            return None;
        }
        let n = self.consumers.len();
        let start = self.next_consumer % n;
        let index = (0..n)
            .map(|i| (start + i) % n)
            .find(|&i| self.consumers[i].has_room())?;
        let (_, mut entry) = self.ready.pop_first()?;
        entry.delivery_count += 1;
        let consumer = &mut self.consumers[index];
        consumer.in_flight += 1;
        self.next_consumer = index + 1;
        let dispatch = Dispatch {
            conn: consumer.conn,
            consumer_tag: consumer.tag.clone(),
            auto_ack: consumer.auto_ack,
            seq: entry.seq,
            message: entry.message.clone(),
            delivery_count: entry.delivery_count,
        };
        self.unacked.insert(
            entry.seq,
            Unacked {
                entry,
                conn: consumer.conn,
                consumer_tag: consumer.tag.clone(),
            },
        );
        Some(dispatch)
    }

    /// Settles an unacked message: it leaves the queue.
    pub fn ack(&mut self, seq: u64) -> Option<Entry> {
        let unacked = self.unacked.remove(&seq)?;
        self.release_credit(&unacked);
        Some(unacked.entry)
    }

    /// Returns an unacked message to its place in the ready list.
    pub fn requeue(&mut self, seq: u64) -> Option<&mut Entry> {
        let unacked = self.unacked.remove(&seq)?;
        self.release_credit(&unacked);
        Some(self.ready.entry(seq).or_insert(unacked.entry))
    }

    fn release_credit(&mut self, unacked: &Unacked) {
        if let Some(consumer) = self
            .consumers
            .iter_mut()
            .find(|c| c.conn == unacked.conn && c.tag == unacked.consumer_tag)
        {
            consumer.in_flight -= 1;
        }
    }

    /// Removes every ready message (unacked ones stay).
    pub fn purge(&mut self) -> Vec<Entry> {
        std::mem::take(&mut self.ready).into_values().collect()
    }

    /// Every message, ready and unacked, for deletion of the whole queue.
    pub fn drain_all(&mut self) -> Vec<Entry> {
        let mut all = self.purge();
        all.extend(self.unacked.drain().map(|(_, u)| u.entry));
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue() -> Queue {
        Queue::new(
            "q".into(),
            1,
            QueueSpec {
                durable: false,
                exclusive_owner: None,
                auto_delete: false,
                arguments: Headers::new(),
            },
        )
    }

    fn msg(text: &str) -> Arc<Message> {
        Arc::new(Message::text("q", text))
    }

    fn body(d: &Dispatch) -> &[u8] {
        &d.message.body
    }

    #[test]
    fn fifo_without_consumers_then_delivered_in_order() {
        let mut q = queue();
        for t in ["a", "b", "c"] {
            q.push(msg(t), false);
        }
        assert!(q.next_dispatch().is_none());
        q.add_consumer(Consumer::new(1, "c1".into(), 0, false));
        let got: Vec<_> = std::iter::from_fn(|| q.next_dispatch()).collect();
        assert_eq!(got.iter().map(body).collect::<Vec<_>>(), [b"a", b"b", b"c"]);
        assert_eq!((q.ready_len(), q.unacked_len()), (0, 3));
    }

    #[test]
    fn prefetch_limits_in_flight_and_ack_frees_room() {
        let mut q = queue();
        for i in 0..5 {
            q.push(msg(&i.to_string()), false);
        }
        q.add_consumer(Consumer::new(1, "c".into(), 2, false));
        let first = q.next_dispatch().unwrap();
        q.next_dispatch().unwrap();
        assert!(q.next_dispatch().is_none(), "prefetch 2 reached");
        q.ack(first.seq).unwrap();
        assert!(q.next_dispatch().is_some());
        assert!(q.next_dispatch().is_none());
    }

    #[test]
    fn round_robin_between_competing_consumers() {
        let mut q = queue();
        for i in 0..6 {
            q.push(msg(&i.to_string()), false);
        }
        q.add_consumer(Consumer::new(1, "a".into(), 0, false));
        q.add_consumer(Consumer::new(2, "b".into(), 0, false));
        let conns: Vec<_> = std::iter::from_fn(|| q.next_dispatch())
            .map(|d| d.conn)
            .collect();
        assert_eq!(conns, [1, 2, 1, 2, 1, 2]);
    }

    #[test]
    fn requeue_returns_to_original_place_with_count() {
        let mut q = queue();
        for t in ["a", "b", "c"] {
            q.push(msg(t), false);
        }
        q.add_consumer(Consumer::new(1, "c".into(), 1, false));
        let a = q.next_dispatch().unwrap();
        assert_eq!(a.delivery_count, 1);
        q.requeue(a.seq).unwrap();
        let again = q.next_dispatch().unwrap();
        assert_eq!((body(&again), again.delivery_count), (&b"a"[..], 2));
    }

    #[test]
    fn removed_consumer_keeps_unacked_until_acked() {
        let mut q = queue();
        q.push(msg("a"), false);
        q.add_consumer(Consumer::new(1, "c".into(), 0, false));
        let a = q.next_dispatch().unwrap();
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
        q.restore(e);
        assert_eq!(q.push(msg("new"), true), 42);
        q.add_consumer(Consumer::new(1, "c".into(), 0, false));
        let d = q.next_dispatch().unwrap();
        assert_eq!((d.seq, d.delivery_count), (41, 3));
    }
}
