//! The broker's recent message rates, kept so the management page's chart is filled when
//! it opens: one task samples every vhost's queue counters every [`SAMPLE_EVERY`] and keeps
//! what they counted in the last [`SAMPLES_KEPT`] intervals per vhost (10 minutes, bounded
//! memory), served by `GET /api/rates`.
//!
//! The task owns the history; readers get the snapshot it publishes after each sample.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::json;
use tokio::sync::watch;

use crate::protocol::{QueueInfo, QueueList, VhostList};
use crate::router::Session;

/// How often the counters are sampled.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(5);
/// Samples kept per vhost: 10 minutes' worth.
pub const SAMPLES_KEPT: usize = 120;

/// What one vhost's queues counted in the [`SAMPLE_EVERY`] ending at `t` (a rate is the
/// count over the interval).
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct RateSample {
    /// End of the interval, milliseconds since the Unix epoch.
    pub t: u64,
    pub published: u64,
    pub delivered: u64,
    pub acked: u64,
    pub redelivered: u64,
    pub dead_lettered: u64,
}

/// Each vhost's samples, oldest first.
pub type Snapshot = Arc<BTreeMap<String, Vec<RateSample>>>;

/// Reads the sampler's latest snapshot.
#[derive(Clone)]
pub struct RateHistory {
    latest: watch::Receiver<Snapshot>,
}

impl RateHistory {
    /// Starts the sampler on the broker's own session (which may list every vhost); it
    /// stops when `shutdown` turns true.
    pub fn start(session: Session, shutdown: watch::Receiver<bool>) -> RateHistory {
        let (tx, latest) = watch::channel(Snapshot::default());
        tokio::spawn(sample_until(session, tx, shutdown));
        RateHistory { latest }
    }

    /// `vhost`'s samples, oldest first (empty before the first interval ends).
    pub fn of(&self, vhost: &str) -> Vec<RateSample> {
        self.latest.borrow().get(vhost).cloned().unwrap_or_default()
    }
}

/// The counters a rate is computed from, per queue.
#[derive(Clone, Copy, Default)]
struct Counters {
    published: u64,
    delivered: u64,
    acked: u64,
    redelivered: u64,
    dead_lettered: u64,
}

impl From<&QueueInfo> for Counters {
    fn from(q: &QueueInfo) -> Counters {
        Counters {
            published: q.published,
            delivered: q.delivered,
            acked: q.acked,
            redelivered: q.redelivered,
            dead_lettered: q.dead_lettered,
        }
    }
}

/// One vhost's samples and the counters the next one starts from.
#[derive(Default)]
struct VhostHistory {
    /// Empty at first: the counters count since the broker started (or the vhost was
    /// created), so the first sample counts from zero.
    previous: HashMap<String, Counters>,
    samples: VecDeque<RateSample>,
}

impl VhostHistory {
    /// Adds the sample for the interval since the previous counters, ending at `t`.
    fn record(&mut self, queues: &[QueueInfo], t: u64) {
        let current = queues.iter().map(|q| (q.queue.clone(), q.into())).collect();
        let previous = std::mem::replace(&mut self.previous, current);
        let mut sample = RateSample {
            t,
            ..Default::default()
        };
        for q in queues {
            let now = Counters::from(q);
            // A queue new in this interval counts from zero; a deleted and redeclared
            // one's counters restart, so a drop counts as nothing.
            let before = previous.get(&q.queue).copied().unwrap_or_default();
            sample.published += now.published.saturating_sub(before.published);
            sample.delivered += now.delivered.saturating_sub(before.delivered);
            sample.acked += now.acked.saturating_sub(before.acked);
            sample.redelivered += now.redelivered.saturating_sub(before.redelivered);
            sample.dead_lettered += now.dead_lettered.saturating_sub(before.dead_lettered);
        }
        self.samples.push_back(sample);
        while self.samples.len() > SAMPLES_KEPT {
            self.samples.pop_front();
        }
    }
}

async fn sample_until(
    session: Session,
    tx: watch::Sender<Snapshot>,
    mut shutdown: watch::Receiver<bool>,
) {
    // Per vhost: a session listing its queues, and its history.
    let mut vhosts: HashMap<String, (Session, VhostHistory)> = HashMap::new();
    let mut ticks = tokio::time::interval(SAMPLE_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = shutdown.changed() => return,
        }
        let names = match session.call(json!({"op": "list_vhosts"})).await {
            Ok(list) => match serde_json::from_value::<VhostList>(list) {
                Ok(list) => list.vhosts.into_iter().map(|v| v.vhost).collect::<Vec<_>>(),
                Err(_) => continue,
            },
            // Shutting down, or the router busy past the reply deadline: try next time.
            Err(_) => continue,
        };
        vhosts.retain(|name, _| names.contains(name));
        let t = crate::clock::now_ms();
        for name in names {
            let (queues, history) = vhosts
                .entry(name.clone())
                .or_insert_with(|| (session.in_vhost(&name), VhostHistory::default()));
            let Ok(list) = queues.call(json!({"op": "list_queues"})).await else {
                continue;
            };
            let Ok(list) = serde_json::from_value::<QueueList>(list) else {
                continue;
            };
            history.record(&list.queues, t);
        }
        let snapshot = vhosts
            .iter()
            .map(|(name, (_, h))| (name.clone(), h.samples.iter().copied().collect()))
            .collect();
        tx.send_replace(Arc::new(snapshot));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue(name: &str, published: u64, acked: u64) -> QueueInfo {
        serde_json::from_value(json!({
            "queue": name, "durable": true, "exclusive": false, "auto_delete": false,
            "ready": 0, "unacked": 0, "consumers": 0, "dead_lettered": 0,
            "published": published, "acked": acked,
        }))
        .unwrap()
    }

    #[test]
    fn counts_are_deltas_per_interval_and_the_history_is_bounded() {
        let mut h = VhostHistory::default();
        h.record(&[queue("a", 100, 0)], 0);
        assert_eq!(
            h.samples[0].published, 100,
            "counted since the broker started"
        );
        h.record(&[queue("a", 150, 10), queue("b", 25, 0)], 5000);
        let s = h.samples[1];
        assert_eq!((s.t, s.published, s.acked), (5000, 75, 10));
        // `a` deleted and redeclared: its counters restart, which counts as nothing.
        h.record(&[queue("a", 5, 0), queue("b", 25, 0)], 10_000);
        assert_eq!(h.samples[2].published, 0);
        for i in 0..SAMPLES_KEPT as u64 * 2 {
            h.record(&[], 15_000 + i);
        }
        assert_eq!(h.samples.len(), SAMPLES_KEPT);
    }
}
