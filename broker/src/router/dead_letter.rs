//! Taking messages out of queues as dead letters (into the queue's dead-letter target
//! through the one enqueue path, `enqueue.rs`): death records, the `.dlq` convention, and
//! the operations that inspect and replay dead letters.
//!
//! A dead letter's removal from its queue and its insertion into the target go into the
//! same store batch, so one commit does both: a crash never loses or duplicates it.

use std::sync::Arc;

use serde_json::{Value, json};

use super::enqueue::QueueFull;
use super::{Answer, OpError, Reply, Router};
use crate::message::{Headers, Message};
use crate::protocol::{Moved, PeekedMessage, PeekedMessages};
use crate::queue::{DeadLetterTarget, Entry, QueuePolicy, QueueSpec};
use crate::store::{QueueRecord, StoreOp};

/// The header holding a message's death records, newest first.
pub const DEATH_HEADER: &str = "x-death";

/// Past this many dead letters caused by one event (queues dead-lettering into each other
/// in a cycle under `max_length`), the rest are dropped rather than looping.
const MAX_DEAD_LETTER_CHAIN: usize = 10_000;

/// Why a message was dead-lettered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeathReason {
    Rejected,
    DeliveryLimit,
    Expired,
    MaxLength,
    PluginError,
}

impl DeathReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DeathReason::Rejected => "rejected",
            DeathReason::DeliveryLimit => "delivery_limit",
            DeathReason::Expired => "expired",
            DeathReason::MaxLength => "max_length",
            DeathReason::PluginError => "plugin_error",
        }
    }
}

impl Router {
    /// Takes `entry` (already out of queue `from`) to the queue's dead-letter target.
    pub(super) fn dead_letter(
        &mut self,
        from: &Arc<str>,
        entry: Entry,
        reason: DeathReason,
        now: u64,
    ) {
        self.dead_letter_chain(from, entry, reason, now, 0);
    }

    /// [`Self::dead_letter`] for the `chain`-th dead letter one event caused (on other
    /// shards too: a forwarded dead letter carries its count, so a cycle across shards
    /// is cut off like one within a shard).
    pub(super) fn dead_letter_chain(
        &mut self,
        from: &Arc<str>,
        entry: Entry,
        reason: DeathReason,
        now: u64,
        chain: usize,
    ) {
        let mut work = vec![(from.clone(), entry, reason)];
        let mut handled = chain;
        while let Some((from, entry, reason)) = work.pop() {
            handled += 1;
            let Some(queue) = self.queues.get_mut(&from) else {
                continue;
            };
            let removal = entry.stored.then_some(StoreOp::DeleteMessage {
                queue: queue.id,
                seq: entry.seq,
                state: entry.state_stored,
            });
            if reason == DeathReason::Expired {
                queue.counters.expired += 1;
            }
            *self
                .turn
                .dead_letters
                .entry((from.clone(), reason.as_str()))
                .or_default() += 1;
            if handled > MAX_DEAD_LETTER_CHAIN {
                queue.counters.dropped += 1;
                tracing::warn!(queue = %from, "dead-letter cycle: message dropped");
                self.turn.store_some(removal);
                continue;
            }
            let target = queue.policy.dead_letter.clone();
            let message = Arc::new(with_death_record(&entry.message, &from, reason, now));
            // Targets here, and on other shards (queue, or the source of a `.dlq` to make).
            let mut here = Vec::new();
            let mut elsewhere: Vec<(Arc<str>, Option<Arc<str>>)> = Vec::new();
            match target {
                DeadLetterTarget::Drop => {}
                DeadLetterTarget::DefaultQueue => {
                    let dlq = format!("{from}.dlq");
                    match self.queues.is_local(&dlq) {
                        true => here.push(self.ensure_dlq(&from)),
                        false => elsewhere.push((dlq.into(), Some(from.clone()))),
                    }
                }
                DeadLetterTarget::Exchange {
                    exchange,
                    routing_key,
                } => {
                    let mut routed = (*message).clone();
                    // The exchange is named in the queue's arguments, in its vhost.
                    routed.exchange = crate::vhost::qualify(crate::vhost::of(&from), &exchange);
                    if let Some(key) = routing_key {
                        routed.routing_key = key;
                    }
                    match self.route(&routed) {
                        Ok(destinations) => {
                            for destination in destinations {
                                match self.queues.is_local(&destination) {
                                    true => here.push(destination),
                                    false => elsewhere.push((destination, None)),
                                }
                            }
                        }
                        Err(e) => {
                            tracing::warn!(queue = %from, error = %e.message, "dead-letter route failed");
                        }
                    }
                }
            };
            let queue = self.queues.get_mut(&from).expect("checked above");
            if here.is_empty() && elsewhere.is_empty() {
                queue.counters.dropped += 1;
                self.turn.store_some(removal);
                continue;
            }
            queue.counters.dead_lettered += 1;
            // Removed in the commit that stores its copy: this turn's, the one other
            // shard's it goes to, or, with copies on several, a later one of this shard's
            // once theirs have committed (see `forward.rs`).
            let (mut rides, mut stored) = (None, None);
            match elsewhere.len() {
                0 => self.turn.store_some(removal),
                1 => rides = removal,
                n => stored = removal.map(|removal| self.defer_until_stored(n, vec![removal])),
            }
            for (queue, dlq_of) in elsewhere {
                self.forward(super::forward::Forwarded {
                    queue,
                    dlq_of,
                    message: message.clone(),
                    removal: rides.take().into_iter().collect(),
                    stored: stored.clone(),
                    refused: super::forward::OnRefusal::Drop,
                    chain: handled,
                });
            }
            for destination in here {
                match self.push_into(&destination, &message, now) {
                    Ok((_, evicted)) => work.extend(
                        evicted
                            .into_iter()
                            .map(|e| (destination.clone(), e, DeathReason::MaxLength)),
                    ),
                    // A full `reject_publish` target drops it (counted there).
                    Err(QueueFull) => {
                        if let Some(target) = self.queues.get_mut(&destination) {
                            target.counters.dropped += 1;
                        }
                    }
                }
            }
        }
    }

    /// One log line per (queue, reason) that dead-lettered messages this turn.
    pub(super) fn log_dead_letters(&mut self) {
        for ((queue, reason), messages) in std::mem::take(&mut self.turn.dead_letters) {
            tracing::info!(%queue, reason, messages, "messages dead-lettered");
        }
    }

    /// The `<queue>.dlq` queue, declared durable on first use. It drops its own dead
    /// letters, so rejecting from a DLQ does not grow a chain of `.dlq.dlq` queues.
    pub(super) fn ensure_dlq(&mut self, queue: &str) -> Arc<str> {
        let name = format!("{queue}.dlq");
        if let Some((existing, _)) = self.queues.get_key_value(name.as_str()) {
            return existing.clone();
        }
        let mut arguments = Headers::new();
        arguments.insert("dead_letter".into(), Value::Bool(false));
        let policy = QueuePolicy::from_arguments(&arguments, false).expect("valid DLQ arguments");
        let spec = QueueSpec {
            durable: true,
            exclusive_owner: None,
            auto_delete: false,
            arguments: arguments.clone(),
        };
        let id = self.queues.next_queue_id();
        self.turn.store(StoreOp::PutQueue(QueueRecord {
            id,
            name: name.clone(),
            auto_delete: false,
            arguments,
            declared_by: None,
        }));
        let name: Arc<str> = name.into();
        tracing::info!(queue = %name, "dead-letter queue created");
        let queue = self.new_queue(name.clone(), id, spec, policy);
        self.queues.insert(name.clone(), queue);
        name
    }

    pub(super) fn peek_queue(&self, name: &str, limit: usize) -> Result<Reply, OpError> {
        let messages = self
            .queue(name)?
            .peek(limit)
            .into_iter()
            .map(|entry| PeekedMessage {
                delivery_count: entry.delivery_count,
                message: entry.message.clone(),
            })
            .collect();
        Ok(Reply::Ok(Answer::from(PeekedMessages { messages })))
    }

    /// Moves dead letters back to the queue their newest death record names (all, or
    /// those with `message_id`); messages whose original queue is gone stay.
    pub(super) fn requeue_dead_letters(
        &mut self,
        conn: crate::queue::ConnId,
        name: &str,
        message_id: Option<&str>,
    ) -> Result<Reply, OpError> {
        super::queues::check_access(self.queue(name)?, self.owner(conn))?;
        // Death records name queues of the dead letters' vhost, as its clients know them.
        let vhost = crate::vhost::of(name).to_string();
        let origin = |message: &Message| {
            death_queue(message).map(|queue| crate::vhost::qualify(&vhost, queue))
        };
        // What can move: dead letters whose queue still exists, on any shard.
        let existing: std::collections::HashSet<Arc<str>> = (self.queues.keys().cloned())
            .chain(self.queues.placement().names())
            .collect();
        let dlq = self.queues.get_mut(name).expect("checked above");
        let dlq_id = dlq.id;
        let taken = dlq.take_ready_where(|entry| {
            let id_matches = message_id
                .is_none_or(|id| entry.message.properties.message_id.as_deref() == Some(id));
            id_matches
                && origin(&entry.message)
                    .is_some_and(|q| existing.contains(q.as_str()) && q != name)
        });
        let now = crate::clock::now_ms();
        let dlq_name: Arc<str> = name.into();
        let mut moved = 0;
        for entry in taken {
            let removal = entry.stored.then_some(StoreOp::DeleteMessage {
                queue: dlq_id,
                seq: entry.seq,
                state: entry.state_stored,
            });
            let target: Arc<str> = origin(&entry.message).expect("selected above").into();
            moved += 1;
            if !self.queues.is_local(&target) {
                // Its removal from the DLQ rides with it (back with it, if refused).
                self.forward(super::forward::Forwarded {
                    queue: target,
                    dlq_of: None,
                    message: entry.message.clone(),
                    removal: removal.into_iter().collect(),
                    stored: None,
                    refused: super::forward::OnRefusal::BackTo(dlq_name.clone()),
                    chain: 0,
                });
                continue;
            }
            self.turn.store_some(removal);
            // The original queue is full (`reject_publish`): it stays a dead letter, at
            // the DLQ's tail.
            if let Err(QueueFull) = self.enqueue(&target, &entry.message, now) {
                moved -= 1;
                let _ = self.enqueue(&dlq_name, &entry.message, now);
            }
        }
        Ok(Reply::OkAfterCommit(Answer::from(Moved { moved })))
    }
}

/// The queue named by a message's newest death record.
fn death_queue(message: &Message) -> Option<&str> {
    message
        .headers
        .get(DEATH_HEADER)?
        .get(0)?
        .get("queue")?
        .as_str()
}

/// A copy of `message` with a death record for (`queue`, `reason`): an existing record for
/// the same pair is counted up and moved to the front, as RabbitMQ's `x-death` does. Its
/// own expiration and delay are moved into the record, so a dead letter does not expire
/// again (and vanish) in the queue it lands in.
fn with_death_record(message: &Message, queue: &str, reason: DeathReason, now: u64) -> Message {
    let mut dead = message.clone();
    let original_expiration = dead.properties.expiration_ms.take();
    dead.properties.delay_ms = None;
    let mut records = match dead.headers.remove(DEATH_HEADER) {
        Some(Value::Array(records)) => records,
        _ => Vec::new(),
    };
    let same = |r: &Value| r["queue"] == queue && r["reason"] == reason.as_str();
    let count = match records.iter().position(same) {
        Some(i) => records.remove(i)["count"].as_u64().unwrap_or(0) + 1,
        None => 1,
    };
    records.insert(
        0,
        json!({
            "reason": reason.as_str(),
            "queue": crate::vhost::local(queue),
            "exchange": crate::vhost::local(&message.exchange),
            "routing_key": message.routing_key,
            "count": count,
            "time": now,
        }),
    );
    if let Some(ms) = original_expiration {
        records[0]["original_expiration_ms"] = json!(ms);
    }
    dead.headers
        .insert(DEATH_HEADER.into(), Value::Array(records));
    dead
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn death_records_count_repeats_and_keep_newest_first() {
        let mut m = Message::text("orders", "x");
        m.exchange = "in".into();
        let once = with_death_record(&m, "orders", DeathReason::Rejected, 10);
        let twice = with_death_record(&once, "orders", DeathReason::Rejected, 20);
        let other = with_death_record(&twice, "orders.retry", DeathReason::Expired, 30);
        let records = other.headers[DEATH_HEADER].as_array().unwrap();
        assert_eq!(records.len(), 2);
        assert_eq!(records[0]["reason"], "expired");
        assert_eq!(records[1]["count"], 2);
        assert_eq!(records[1]["time"], 20);
        assert_eq!(records[1]["exchange"], "in");
        assert_eq!(death_queue(&other), Some("orders.retry"));
        assert_eq!(&other.body[..], b"x", "body kept");

        m.properties.expiration_ms = Some(50);
        let dead = with_death_record(&m, "q", DeathReason::Expired, 1);
        assert_eq!(dead.properties.expiration_ms, None, "does not expire again");
        assert_eq!(dead.headers[DEATH_HEADER][0]["original_expiration_ms"], 50);
    }
}
