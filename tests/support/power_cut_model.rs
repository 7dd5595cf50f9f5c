//! What a power-cut test expects of the store: for every message it ever published,
//! whether it must be there and where it may be; and the plugin versions it deployed.
//!
//! The rules are the broker's durability promise, seen from a client:
//! - a confirmed message is present exactly once (its queue or, once dead-lettered or
//!   nacked, its queue or the DLQ, never both);
//! - an acked message never comes back once a publish sent after the ack (on the same
//!   connection, so committed no earlier) was confirmed;
//! - anything else in doubt at the cut may or may not be there, but at most once;
//! - what a broker served after recovery was durable: it must survive the next cut.
#![allow(dead_code)] // each test crate uses a different subset

use std::collections::BTreeMap;

/// The queues of the workload.
pub const QUEUE: &str = "orders";
pub const DLQ: &str = "orders.dlq";

/// Where a message may be: a set of queues (bits).
pub const IN_QUEUE: u8 = 1;
pub const IN_DLQ: u8 = 2;
pub const NOWHERE: u8 = 0;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fate {
    /// Confirmed (or seen after a recovery) and not since acked.
    pub required: bool,
    /// Where it may be; `NOWHERE`: it must not come back.
    pub places: u8,
}

/// Message id → fate, plus the plugin versions deployed.
#[derive(Debug, Default)]
pub struct Expected {
    pub messages: BTreeMap<u64, Fate>,
    pub next_id: u64,
    /// The active version when last seen (or confirmed), 0 before the first deploy.
    pub plugin_committed: u64,
    /// The newest version asked for.
    pub plugin_attempted: u64,
    /// Version → expected content hash.
    pub plugin_hashes: BTreeMap<u64, String>,
}

/// Totals over a run, for the summary.
#[derive(Debug, Default)]
pub struct Tally {
    pub verified_messages: u64,
    pub confirmed: u64,
    pub fenced_acks: u64,
    pub dead_lettered: u64,
    pub plugin_checks: u64,
}

/// The body of message `id`: its id, then a deterministic filler of a size that varies
/// (every 23rd message is large, so the file keeps growing).
pub fn body(id: u64) -> Vec<u8> {
    let len = match id % 23 {
        0 => 48 * 1024 + (id % 7) as usize * 1000,
        _ => (id.wrapping_mul(7919) % 1800) as usize,
    };
    let mut body = format!("m{id}:").into_bytes();
    body.extend((0..len).map(|i| b'a' + ((i as u64 + id) % 26) as u8));
    body
}

/// The id a body names, if it is one of ours.
pub fn id_of(body: &[u8]) -> Option<u64> {
    let text = body.strip_prefix(b"m")?;
    let end = text.iter().position(|b| *b == b':')?;
    std::str::from_utf8(&text[..end]).ok()?.parse().ok()
}

impl Expected {
    /// A new message, published (not yet confirmed).
    pub fn publish(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.messages.insert(
            id,
            Fate {
                required: false,
                places: IN_QUEUE,
            },
        );
        id
    }

    pub fn confirmed(&mut self, id: u64) {
        self.fate(id).required = true;
    }

    /// Acked: in doubt until fenced.
    pub fn acked(&mut self, id: u64) {
        self.fate(id).required = false;
    }

    /// A publish sent after the ack of `id` was confirmed: the ack is durable.
    pub fn fenced(&mut self, id: u64) {
        let fate = self.fate(id);
        fate.required = false;
        fate.places = NOWHERE;
    }

    /// Nacked (with or without requeue): in its queue or the DLQ.
    pub fn nacked(&mut self, id: u64) {
        self.fate(id).places |= IN_DLQ;
    }

    fn fate(&mut self, id: u64) -> &mut Fate {
        self.messages.get_mut(&id).expect("a published id")
    }

    /// Checks what a recovered broker holds (`seen`: id → queue bit, each delivery once,
    /// bodies already checked) against the rules; then takes it as the new durable state.
    /// Returns the violations.
    pub fn verify(&mut self, seen: &[(u64, u8)]) -> Vec<String> {
        let mut problems = Vec::new();
        let mut found: BTreeMap<u64, u8> = BTreeMap::new();
        for &(id, place) in seen {
            if let Some(earlier) = found.insert(id, place) {
                problems.push(format!(
                    "message {id} present twice (in {} and {})",
                    name(earlier),
                    name(place)
                ));
            }
            match self.messages.get(&id) {
                None => problems.push(format!("message {id} was never published")),
                Some(fate) if fate.places & place == 0 => problems.push(format!(
                    "message {id} in {} (may be in: {}; {})",
                    name(place),
                    names(fate.places),
                    match fate.places {
                        NOWHERE => "acked, and the ack was followed by a confirmed publish",
                        _ => "moved",
                    }
                )),
                Some(_) => {}
            }
        }
        for (id, fate) in &mut self.messages {
            match found.get(id) {
                Some(&place) => {
                    fate.required = true;
                    fate.places = place;
                }
                None => {
                    if fate.required {
                        problems.push(format!(
                            "message {id} lost (confirmed, may be in: {})",
                            names(fate.places)
                        ));
                    }
                    fate.required = false;
                    fate.places = NOWHERE;
                }
            }
        }
        problems
    }

    /// Checks the active plugin version a recovered broker reports; then takes it.
    pub fn verify_plugin(&mut self, active: u64, hash: Option<&str>) -> Vec<String> {
        let mut problems = Vec::new();
        if active < self.plugin_committed || active > self.plugin_attempted {
            problems.push(format!(
                "plugin version {active} active; expected {}..={} (last committed ..= last asked)",
                self.plugin_committed, self.plugin_attempted
            ));
        }
        if active > 0 && hash != self.plugin_hashes.get(&active).map(String::as_str) {
            problems.push(format!(
                "plugin version {active} has hash {hash:?}, expected {:?}",
                self.plugin_hashes.get(&active)
            ));
        }
        self.plugin_committed = active;
        self.plugin_attempted = active;
        problems
    }
}

fn name(place: u8) -> &'static str {
    match place {
        IN_QUEUE => QUEUE,
        IN_DLQ => DLQ,
        _ => "?",
    }
}

fn names(places: u8) -> String {
    match places {
        NOWHERE => "nowhere".into(),
        IN_QUEUE => QUEUE.into(),
        IN_DLQ => DLQ.into(),
        _ => format!("{QUEUE} or {DLQ}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_name_their_ids() {
        for id in [0, 1, 22, 23, 4711] {
            assert_eq!(id_of(&body(id)), Some(id));
        }
        assert!(body(23).len() > 48 * 1024);
    }
}
