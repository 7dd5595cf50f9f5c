//! The broker's recent message rates, kept so the management page's chart is filled when
//! it opens: one task samples every vhost's queue counters every [`SAMPLE_EVERY`] and keeps
//! the last [`SAMPLES_KEPT`] rates per vhost (10 minutes), served by `GET /api/rates`.
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

/// Messages per second across one vhost's queues over the [`SAMPLE_EVERY`] ending at `t`.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct RateSample {
    /// End of the interval, milliseconds since the Unix epoch.
    pub t: u64,
    pub publish: f64,
    pub deliver: f64,
    pub ack: f64,
    pub redeliver: f64,
    pub dead_letter: f64,
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
    /// `None` until the first look, which only sets where counting starts.
    previous: Option<HashMap<String, Counters>>,
    samples: VecDeque<RateSample>,
}

impl VhostHistory {
    /// Adds the sample for the interval since the previous counters (`seconds` long).
    fn record(&mut self, queues: &[QueueInfo], t: u64, seconds: f64) {
        let current: HashMap<String, Counters> =
            queues.iter().map(|q| (q.queue.clone(), q.into())).collect();
        let Some(previous) = self.previous.replace(current) else {
            return;
        };
        let mut sample = RateSample {
            t,
            ..Default::default()
        };
        for q in queues {
            let now = Counters::from(q);
            // A queue new in this interval counts from zero; a deleted and redeclared
            // one's counters restart, so a drop counts as nothing.
            let before = previous.get(&q.queue).copied().unwrap_or_default();
            let delta = |now: u64, before: u64| now.saturating_sub(before) as f64 / seconds;
            sample.publish += delta(now.published, before.published);
            sample.deliver += delta(now.delivered, before.delivered);
            sample.ack += delta(now.acked, before.acked);
            sample.redeliver += delta(now.redelivered, before.redelivered);
            sample.dead_letter += delta(now.dead_lettered, before.dead_lettered);
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
    let mut last = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = shutdown.changed() => return,
        }
        let now = tokio::time::Instant::now();
        let seconds = now.duration_since(last).as_secs_f64();
        last = now;
        let names = match session.call(json!({"op": "list_vhosts"})).await {
            Ok(list) => match serde_json::from_value::<VhostList>(list) {
                Ok(list) => list.vhosts.into_iter().map(|v| v.vhost).collect::<Vec<_>>(),
                Err(_) => continue,
            },
            // Shutting down, or the router busy past the reply deadline: try next time.
            Err(_) => continue,
        };
        vhosts.retain(|name, _| names.contains(name));
        let t = unix_ms();
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
            history.record(&list.queues, t, seconds.max(0.001));
        }
        let snapshot = vhosts
            .iter()
            .map(|(name, (_, h))| (name.clone(), h.samples.iter().copied().collect()))
            .collect();
        tx.send_replace(Arc::new(snapshot));
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
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
    fn rates_are_deltas_per_second_and_the_history_is_bounded() {
        let mut h = VhostHistory::default();
        h.record(&[queue("a", 100, 0)], 0, 5.0);
        assert!(h.samples.is_empty(), "the first look only sets the start");
        h.record(&[queue("a", 150, 10), queue("b", 25, 0)], 5000, 5.0);
        let s = h.samples[0];
        assert_eq!((s.t, s.publish, s.ack), (5000, 15.0, 2.0));
        // `a` deleted and redeclared: its counters restart, which is no negative rate.
        h.record(&[queue("a", 5, 0), queue("b", 25, 0)], 10_000, 5.0);
        assert_eq!(h.samples[1].publish, 0.0);
        for i in 0..SAMPLES_KEPT as u64 * 2 {
            h.record(&[], 15_000 + i, 5.0);
        }
        assert_eq!(h.samples.len(), SAMPLES_KEPT);
    }
}
