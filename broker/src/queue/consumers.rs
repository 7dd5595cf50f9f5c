//! A queue's consumers and the messages out with them: round-robin dispatch within each
//! consumer's prefetch window (or, with `single_active_consumer`, to the oldest consumer
//! only), `get`, and settling (ack, or retry with the queue's backoff and
//! `max_deliveries`).

use std::sync::Arc;

use super::{ConnId, Entry, Origin, Queue};
use crate::message::Message;

/// A subscription to a queue.
#[derive(Debug, Clone)]
pub struct Consumer {
    pub conn: ConnId,
    pub tag: Arc<str>,
    /// Most unacked deliveries at once; 0 is unlimited.
    pub prefetch: u32,
    pub auto_ack: bool,
    /// The queue's only consumer while it lasts.
    pub exclusive: bool,
    /// Consumers of a higher priority with room receive first.
    pub priority: i32,
    /// How long its deliveries may stay unacked (its `x-consumer-timeout`); `None`: the
    /// queue's, or the broker's.
    pub timeout_ms: Option<u64>,
    in_flight: u32,
}

impl Consumer {
    pub fn new(conn: ConnId, tag: Arc<str>, prefetch: u32, auto_ack: bool) -> Self {
        Consumer {
            conn,
            tag,
            prefetch,
            auto_ack,
            exclusive: false,
            priority: 0,
            timeout_ms: None,
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
    /// The consumer's own unacked timeout, if it has one.
    pub timeout_ms: Option<u64>,
}

/// What the head of the queue yields.
#[derive(Debug)]
pub enum Next {
    Deliver(Dispatch),
    /// It expired before anyone got it: dead-letter it.
    Expired(Entry),
}

/// How an unacked message goes back after a failed delivery.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Retry {
    /// After the queue's `retry_backoff` delay for this attempt.
    Backoff,
    /// After this many milliseconds (a nack's own delay).
    After(u64),
    /// At once (its consumer vanished).
    Now,
    /// At once and not counted as a delivery (the broker is stopping: nobody failed).
    Release,
}

/// Where a retried message went.
#[derive(Debug)]
pub enum Retried {
    /// Back in the queue, ready at once or at `not_before`.
    Requeued {
        stored: bool,
        delivery_count: u32,
        not_before: Option<u64>,
    },
    /// `max_deliveries` reached: dead-letter it.
    Exhausted(Entry),
}

/// A message out with a consumer (or a `get`), until it is settled.
#[derive(Debug)]
pub(super) struct Unacked {
    pub(super) entry: Entry,
    pub(super) conn: ConnId,
    pub(super) consumer_tag: Arc<str>,
}

impl Queue {
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

    /// Hands the head message to the next consumer with room (within its prefetch, and
    /// on a connection that `may_receive`); an expired head is returned for
    /// dead-lettering instead.
    pub fn next_dispatch(
        &mut self,
        now: u64,
        may_receive: &dyn Fn(ConnId) -> bool,
    ) -> Option<Next> {
        if self.ready.is_empty() || self.consumers.is_empty() {
            return None;
        }
        // A single active consumer: the oldest one, the others wait their turn.
        let n = match self.policy.single_active_consumer {
            true => 1,
            false => self.consumers.len(),
        };
        let start = self.next_consumer % n;
        let mut with_room = (0..n).map(|i| (start + i) % n).filter(|&i| {
            let consumer = &self.consumers[i];
            consumer.has_room() && may_receive(consumer.conn)
        });
        let index = match self.consumers[..n]
            .windows(2)
            .all(|w| w[0].priority == w[1].priority)
        {
            // One priority (nearly always): the next in turn with room.
            true => with_room.next()?,
            // The first in turn among those with room of the highest priority.
            false => with_room.reduce(|best, i| {
                match self.consumers[i].priority > self.consumers[best].priority {
                    true => i,
                    false => best,
                }
            })?,
        };
        let entry = match self.take_head(now)? {
            Ok(entry) => entry,
            Err(expired) => return Some(expired),
        };
        let consumer = &mut self.consumers[index];
        consumer.in_flight += 1;
        self.next_consumer = index + 1;
        let (conn, tag, auto_ack) = (consumer.conn, consumer.tag.clone(), consumer.auto_ack);
        let timeout_ms = consumer.timeout_ms;
        let mut dispatch = self.hand_out(entry, conn, tag, auto_ack);
        dispatch.timeout_ms = timeout_ms;
        Some(Next::Deliver(dispatch))
    }

    /// Takes the head message for a `get` by connection `conn` (no consumer, so no
    /// prefetch); an expired head is returned for dead-lettering instead.
    pub fn next_get(&mut self, now: u64, conn: ConnId) -> Option<Next> {
        let entry = match self.take_head(now)? {
            Ok(entry) => entry,
            Err(expired) => return Some(expired),
        };
        Some(Next::Deliver(self.hand_out(
            entry,
            conn,
            Arc::from(""),
            false,
        )))
    }

    /// The head message, or `Err` with it when it has expired; `None` when the queue is
    /// empty or the head's body cannot be read from the store now (the next turn tries
    /// again).
    fn take_head(&mut self, now: u64) -> Option<Result<Entry, Next>> {
        let entry = loop {
            let key = *self.ready.first_key_value()?.0;
            if let Some(entry) = self.take_ready(key) {
                break entry;
            }
            if self.ready.contains_key(&key) {
                return None;
            }
        };
        match entry.expires_at.is_some_and(|at| at <= now) {
            true => Some(Err(Next::Expired(entry))),
            false => Some(Ok(entry)),
        }
    }

    /// Counts a delivery of `entry` and holds it unacked for `conn`'s `consumer_tag`.
    fn hand_out(
        &mut self,
        mut entry: Entry,
        conn: ConnId,
        consumer_tag: Arc<str>,
        auto_ack: bool,
    ) -> Dispatch {
        entry.delivery_count += 1;
        let dispatch = Dispatch {
            conn,
            consumer_tag: consumer_tag.clone(),
            auto_ack,
            seq: entry.seq,
            message: entry.message.clone(),
            delivery_count: entry.delivery_count,
            timeout_ms: None,
        };
        let unacked = Unacked {
            entry,
            conn,
            consumer_tag,
        };
        self.unacked.insert(dispatch.seq, unacked);
        dispatch
    }

    /// The store operation that acking unacked message `seq` would make, without acking
    /// it: `None` for a transient message (or none unacked at `seq`).
    pub fn ack_op(&self, seq: u64) -> Option<crate::store::StoreOp> {
        let entry = &self.unacked.get(&seq)?.entry;
        entry.stored.then(|| crate::store::StoreOp::DeleteMessage {
            queue: self.id,
            seq,
            state: entry.state_stored,
        })
    }

    /// Settles an unacked message: it leaves the queue.
    pub fn ack(&mut self, seq: u64) -> Option<Entry> {
        let unacked = self.unacked.remove(&seq)?;
        self.release_credit(&unacked);
        Some(unacked.entry)
    }

    /// Returns an unacked message after a failed delivery, honouring `max_deliveries` and
    /// the backoff.
    pub fn retry(&mut self, seq: u64, how: Retry, now: u64) -> Option<Retried> {
        let unacked = self.unacked.remove(&seq)?;
        self.release_credit(&unacked);
        let mut entry = unacked.entry;
        if how == Retry::Release {
            entry.delivery_count -= 1;
        } else if self
            .policy
            .max_deliveries
            .is_some_and(|max| entry.delivery_count >= max)
        {
            return Some(Retried::Exhausted(entry));
        }
        let delay = match how {
            Retry::Backoff => self.policy.backoff_ms(entry.delivery_count),
            Retry::After(ms) => ms,
            Retry::Now | Retry::Release => 0,
        };
        let not_before = (delay > 0).then(|| now.saturating_add(delay));
        entry.state_stored |= entry.stored;
        let retried = Retried::Requeued {
            stored: entry.stored,
            delivery_count: entry.delivery_count,
            not_before,
        };
        self.enqueue(entry, not_before, Origin::Live);
        Some(retried)
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
}
