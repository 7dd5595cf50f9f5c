//! A plugin version on trial next to the active one: a shadow (runs on live traffic
//! without effect, its differences counted) or a canary (routes a share of the messages).
//! One per exchange type, shared by every exchange of that type; each exchange runs it in
//! its own [`super::trial_lane::TrialLane`] and reports here.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::loader::LoadedPlugin;
use super::registry::{PluginHost, PreparedPlugin};
use crate::exchange::BindingId;
use crate::message::{Headers, Message};

/// Differences kept as examples per trial: the newest ones.
pub const TRIAL_EXAMPLES: usize = 20;

/// How a version on trial takes part in routing.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum TrialMode {
    /// Runs on every message the active version routes at ingress; decides nothing.
    Shadow,
    /// Routes `percent` of the messages (each by exactly one version).
    Canary { percent: f64 },
}

impl TrialMode {
    /// A canary's share as a threshold on a uniform `u32` draw (`None` for a shadow).
    pub(crate) fn canary_threshold(self) -> Option<u64> {
        match self {
            TrialMode::Shadow => None,
            TrialMode::Canary { percent } => {
                Some((percent.clamp(0.0, 100.0) / 100.0 * 4_294_967_296.0) as u64)
            }
        }
    }
}

/// One message the shadow routed differently (or failed on).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Difference {
    /// When (ms since the Unix epoch).
    pub at: u64,
    pub exchange: String,
    pub routing_key: String,
    pub headers: Headers,
    /// The bindings the active version routed it to.
    pub active: Vec<BindingId>,
    /// The bindings the shadow would have routed it to, or why it failed.
    pub shadow: Result<Vec<BindingId>, String>,
}

/// What a trial has done so far, since it started (or since the broker did).
#[derive(Debug, Default)]
pub struct TrialReport {
    /// Messages both versions routed (shadow).
    compared: AtomicU64,
    /// Of those, routed to a different set of bindings.
    differed: AtomicU64,
    /// Messages the shadow failed on.
    shadow_failures: AtomicU64,
    /// Messages the shadow left out because publishes to its exchange were piling up.
    shadow_skipped: AtomicU64,
    /// Messages the canary routed.
    canary_messages: AtomicU64,
    /// Messages the canary failed on (routed by the active version instead).
    canary_errors: AtomicU64,
    examples: Mutex<VecDeque<Difference>>,
    /// Why the canary was judged failing, once it was (its lanes stop routing then).
    failed: Mutex<Option<String>>,
    /// `failed` is set; read on every message a canary might take.
    is_failed: AtomicBool,
}

/// A point-in-time copy of a [`TrialReport`].
#[derive(Debug, Clone, Default)]
pub struct TrialSnapshot {
    pub counts: TrialCounts,
    pub failed: Option<String>,
    /// The newest differences, oldest first.
    pub examples: Vec<Difference>,
}

/// A [`TrialReport`]'s counters, read at one moment (each means what its field there does).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct TrialCounts {
    pub compared: u64,
    pub differed: u64,
    pub shadow_failures: u64,
    pub shadow_skipped: u64,
    pub canary_messages: u64,
    pub canary_errors: u64,
}

impl TrialReport {
    /// Compares the two versions' routes of `msg` (the active one succeeded).
    pub(crate) fn compare(
        &self,
        exchange: &str,
        msg: &Message,
        active: &[BindingId],
        shadow: Result<&[BindingId], String>,
    ) {
        match &shadow {
            Ok(ids) => {
                self.compared.fetch_add(1, Ordering::Relaxed);
                if same_bindings(active, ids) {
                    return;
                }
                self.differed.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                self.shadow_failures.fetch_add(1, Ordering::Relaxed);
            }
        }
        let example = Difference {
            at: crate::clock::now_ms(),
            exchange: exchange.to_owned(),
            routing_key: msg.routing_key.clone(),
            headers: msg.headers.clone(),
            active: sorted(active),
            shadow: shadow.map(sorted),
        };
        let mut examples = self.examples.lock().expect("trial lock poisoned");
        if examples.len() == TRIAL_EXAMPLES {
            examples.pop_front();
        }
        examples.push_back(example);
    }

    pub(crate) fn record_skipped(&self, messages: u64) {
        self.shadow_skipped.fetch_add(messages, Ordering::Relaxed);
    }

    pub(crate) fn record_canary(&self) {
        self.canary_messages.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn record_canary_error(&self) {
        self.canary_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Marks the canary failing (the first cause is kept).
    pub(crate) fn fail(&self, cause: String) {
        let mut failed = self.failed.lock().expect("trial lock poisoned");
        failed.get_or_insert(cause);
        self.is_failed.store(true, Ordering::Release);
    }

    pub fn is_failed(&self) -> bool {
        self.is_failed.load(Ordering::Acquire)
    }

    pub fn failed(&self) -> Option<String> {
        self.failed.lock().expect("trial lock poisoned").clone()
    }

    pub fn snapshot(&self) -> TrialSnapshot {
        TrialSnapshot {
            counts: TrialCounts {
                compared: self.compared.load(Ordering::Relaxed),
                differed: self.differed.load(Ordering::Relaxed),
                shadow_failures: self.shadow_failures.load(Ordering::Relaxed),
                shadow_skipped: self.shadow_skipped.load(Ordering::Relaxed),
                canary_messages: self.canary_messages.load(Ordering::Relaxed),
                canary_errors: self.canary_errors.load(Ordering::Relaxed),
            },
            failed: self.failed(),
            examples: self
                .examples
                .lock()
                .expect("trial lock poisoned")
                .iter()
                .cloned()
                .collect(),
        }
    }
}

/// Whether two routes reach the same bindings (order and repeats do not matter: the
/// router delivers at most once per queue).
fn same_bindings(a: &[BindingId], b: &[BindingId]) -> bool {
    a == b || sorted(a) == sorted(b)
}

fn sorted(ids: &[BindingId]) -> Vec<BindingId> {
    let mut ids = ids.to_vec();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// A version on trial for one exchange type.
pub(crate) struct Trial {
    pub plugin: Arc<LoadedPlugin>,
    pub mode: TrialMode,
    pub report: Arc<TrialReport>,
}

/// Why a version cannot go on trial.
#[derive(Debug, thiserror::Error)]
pub enum TrialError {
    #[error("shadow and canary deploys are for exchange plugins, not handlers")]
    NotAnExchange,
    #[error("plugin `{0}` has no active version to run next to; deploy it first")]
    NoActiveVersion(String),
}

impl PluginHost {
    /// Runs a prepared exchange version on trial next to the current one of its type
    /// (replacing any trial it had): every live exchange of the type starts it at its
    /// next message. Refused for a handler and for a type with no current version.
    pub fn start_trial(
        &self,
        prepared: PreparedPlugin,
        mode: TrialMode,
    ) -> Result<Arc<TrialReport>, TrialError> {
        let mut plugin = prepared.into_exchange().ok_or(TrialError::NotAnExchange)?;
        let slot = self
            .slot(&plugin.info.name)
            .ok_or_else(|| TrialError::NoActiveVersion(plugin.info.name.clone()))?;
        plugin.stats = slot.stats_of(plugin.info.version);
        plugin.log = self.log_ring(&plugin.info.name);
        let report = Arc::new(TrialReport::default());
        let trial = Trial {
            plugin: Arc::new(plugin),
            mode,
            report: report.clone(),
        };
        slot.set_trial(Some(Arc::new(trial)));
        Ok(report)
    }

    /// Stops the trial of exchange type `name`; its exchanges drop it at their next
    /// message. Returns whether there was one.
    pub fn end_trial(&self, name: &str) -> bool {
        match self.slot(name) {
            Some(slot) if slot.trial().is_some() => {
                slot.set_trial(None);
                true
            }
            _ => false,
        }
    }

    /// The version on trial for exchange type `name`: version, mode and report.
    pub fn trial(&self, name: &str) -> Option<(u64, TrialMode, Arc<TrialReport>)> {
        let trial = self.slot(name)?.trial()?;
        Some((trial.plugin.info.version, trial.mode, trial.report.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_differences_and_keeps_the_newest_examples() {
        let report = TrialReport::default();
        let msg = Message::text("k", "x");
        report.compare("ex", &msg, &[2, 1], Ok(&[1, 2, 2]));
        assert_eq!(
            report.snapshot().counts.differed,
            0,
            "same set in another order"
        );
        for _ in 0..TRIAL_EXAMPLES + 3 {
            report.compare("ex", &msg, &[1], Ok(&[3]));
        }
        report.compare("ex", &msg, &[1], Err("trap".into()));
        let snap = report.snapshot();
        assert_eq!(snap.counts.compared, TRIAL_EXAMPLES as u64 + 4);
        assert_eq!(snap.counts.differed, TRIAL_EXAMPLES as u64 + 3);
        assert_eq!(snap.counts.shadow_failures, 1);
        assert_eq!(snap.examples.len(), TRIAL_EXAMPLES);
        assert_eq!(snap.examples.last().unwrap().shadow, Err("trap".into()));
    }

    #[test]
    fn canary_threshold_is_the_share_of_the_draws() {
        let ten = TrialMode::Canary { percent: 10.0 }
            .canary_threshold()
            .unwrap();
        assert_eq!(ten, 429_496_729);
        assert_eq!(TrialMode::Shadow.canary_threshold(), None);
    }
}
