//! Plugin versions on trial next to the active one: shadow and canary deploys, their
//! promotion, dropping them, the automatic rollback of a failing canary, and the report.
//!
//! A trial is deployed like any version (numbered, compiled and validated off the
//! router's task, stored with its bytes) but stored as the plugin's trial
//! (`StoreOp::SetPluginTrial`) instead of its active version, and started in the host
//! once that commit is durable. It survives a restart the same way. Promoting stores it
//! as the active version and ends the trial in one commit, then swaps both in the host
//! in one step.

use std::collections::HashMap;

use super::plugins::{AUTO_ROLLBACK_CHECK, Purpose};
use super::{Answer, Command, OpError, Outbound, Reply, Router};
use crate::clock::now_ms;
use crate::exchange::BindingId;
use crate::plugin::{Difference, PluginHost, PluginSource, PreparedPlugin, TrialMode};
use crate::protocol::{
    AutoRollback, BindingTarget, ErrorCode, PluginDeployed, PluginOnTrial, RequestId,
    RouteDifference, RoutedTo, ServerFrame, TrialDropped, TrialFigures, TrialStatus,
};
use crate::queue::ConnId;
use crate::store::{PluginTrialRecord, Recovered, StoreOp, WriteBatch};

/// Plugin name → its version on trial.
pub(super) type Trials = HashMap<String, PluginTrialRecord>;

/// What a deploy makes of its version.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum DeployAs {
    /// The active version, watched for automatic rollback when asked.
    Active { auto_rollback: bool },
    /// A version on trial next to the active one.
    Trial(TrialMode),
}

/// What a deploy asks for: `shadow`, or `canary_percent` in (0, 100], or neither (then
/// `auto_rollback` may be asked, which is for a version made active only).
pub(super) fn requested(
    shadow: bool,
    canary_percent: Option<f64>,
    auto_rollback: bool,
) -> Result<DeployAs, OpError> {
    if auto_rollback && (shadow || canary_percent.is_some()) {
        return Err(OpError::new(
            ErrorCode::InvalidField,
            "`auto_rollback` is for a version made active, not a shadow or canary",
        ));
    }
    match (shadow, canary_percent) {
        (false, None) => Ok(DeployAs::Active { auto_rollback }),
        (true, None) => Ok(DeployAs::Trial(TrialMode::Shadow)),
        (false, Some(percent)) if percent > 0.0 && percent <= 100.0 => {
            Ok(DeployAs::Trial(TrialMode::Canary { percent }))
        }
        (false, Some(percent)) => Err(OpError::new(
            ErrorCode::InvalidField,
            format!("`canary_percent`: {percent} is not above 0 and at most 100"),
        )),
        (true, Some(_)) => Err(OpError::new(
            ErrorCode::InvalidField,
            "`shadow` and `canary_percent` exclude each other",
        )),
    }
}

impl Router {
    /// A shadow or canary deploy needs a version to run next to.
    pub(super) fn check_trial_deploy(&self, name: &str) -> Result<(), OpError> {
        if self.versions.active.contains_key(name) {
            return Ok(());
        }
        let message = format!(
            "plugin `{name}` has no active deployed version to run a shadow or canary next \
             to; deploy it first"
        );
        Err(OpError::new(ErrorCode::PluginNotFound, message))
    }

    /// Before a prepared trial or promotion is stored: refuses a handler on trial, and a
    /// promotion whose trial ended meanwhile (a failing canary rolled back). Answers the
    /// requester and returns false when refused.
    pub(super) fn trial_may_proceed(
        &self,
        name: &str,
        version: u64,
        purpose: Purpose,
        prepared: &PreparedPlugin,
        requester: Option<(ConnId, RequestId)>,
    ) -> bool {
        let refusal = match purpose {
            Purpose::Activate => None,
            Purpose::Trial(_) if !prepared.is_exchange() => Some((
                ErrorCode::InvalidPlugin,
                "shadow and canary deploys are for exchange plugins, not handlers".to_owned(),
            )),
            Purpose::Trial(_) => None,
            Purpose::Promote => match self.versions.trials.get(name) {
                Some(trial) if trial.version == version => None,
                _ => Some((
                    ErrorCode::PreconditionFailed,
                    format!("plugin `{name}` version {version} is no longer on trial"),
                )),
            },
        };
        let Some((code, message)) = refusal else {
            return true;
        };
        tracing::warn!(plugin = %name, version, %message, "plugin trial refused");
        if let Some((conn, id)) = requester {
            self.send_trial_frame(conn, ServerFrame::error(Some(id), code, message));
        }
        false
    }

    /// The store operation that records `purpose`'s outcome for version `version`.
    pub(super) fn trial_store_ops(&mut self, name: &str, version: u64, purpose: Purpose) {
        let trial = match purpose {
            Purpose::Activate => return,
            Purpose::Trial(mode) => Some(PluginTrialRecord { version, mode }),
            Purpose::Promote => None,
        };
        self.turn.store(StoreOp::SetPluginTrial {
            name: name.to_owned(),
            trial,
        });
    }

    /// A shadow or canary version is stored: start it in the host and answer.
    pub(super) fn trial_stored(
        &mut self,
        name: &str,
        version: u64,
        mode: TrialMode,
        prepared: PreparedPlugin,
        requester: Option<(ConnId, RequestId)>,
        mut result: PluginDeployed,
    ) {
        let reply = match self.plugins.start_trial(prepared, mode) {
            Ok(_) => {
                self.versions
                    .trials
                    .insert(name.to_owned(), PluginTrialRecord { version, mode });
                tracing::info!(plugin = %name, version, ?mode, "plugin version on trial");
                if let TrialMode::Canary { .. } = mode {
                    self.watch_canary(name.to_owned(), version);
                }
                result.on_trial = Some(PluginOnTrial {
                    trial: mode,
                    active_version: self.versions.active.get(name).copied(),
                });
                Ok(Answer::from(result).into_json())
            }
            Err(e) => {
                // Stored as the trial, but it cannot run (the plugin was deleted meanwhile):
                // not restored either.
                self.trial_store_ops(name, version, Purpose::Promote);
                Err(e.to_string())
            }
        };
        if let Some((conn, id)) = requester {
            let frame = match reply {
                Ok(result) => ServerFrame::Ok { id, result },
                Err(e) => ServerFrame::error(Some(id), ErrorCode::PluginNotFound, e),
            };
            self.send_trial_frame(conn, frame);
        }
    }

    /// `promote_plugin`: makes the version on trial the active one (stored, then swapped
    /// in with the trial's end in one step).
    pub(super) fn promote_plugin(
        &mut self,
        conn: ConnId,
        id: RequestId,
        name: &str,
    ) -> Result<Reply, OpError> {
        let trial = self
            .versions
            .trials
            .get(name)
            .ok_or_else(|| no_trial(name))?;
        let version = self
            .versions
            .deployed
            .get(name)
            .and_then(|versions| versions.iter().find(|v| v.version == trial.version))
            .cloned()
            .ok_or_else(|| no_trial(name))?;
        self.queue_deploy(
            Some((conn, id)),
            version,
            false,
            false,
            None,
            Purpose::Promote,
        );
        Ok(Reply::Silent)
    }

    /// `rollback_plugin` without a version while a trial runs: ends the trial; the active
    /// version stays.
    pub(super) fn drop_trial(&mut self, name: &str) -> Result<Reply, OpError> {
        let trial = self
            .versions
            .trials
            .remove(name)
            .ok_or_else(|| no_trial(name))?;
        self.trial_store_ops(name, trial.version, Purpose::Promote);
        self.plugins.end_trial(name);
        tracing::info!(plugin = %name, version = trial.version, "plugin trial dropped");
        let dropped = TrialDropped {
            name: name.to_owned(),
            dropped: trial.version,
            trial: trial.mode,
            version: self.versions.active.get(name).copied(),
        };
        Ok(Reply::OkAfterCommit(dropped.into()))
    }

    /// Watches canary `version` of `name` while it is on trial; once its lanes judged it
    /// failing, asks the router to drop it.
    pub(super) fn watch_canary(&self, name: String, version: u64) {
        let (plugins, router) = (self.plugins.clone(), self.self_tx.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(AUTO_ROLLBACK_CHECK);
            loop {
                tick.tick().await;
                let report = match plugins.trial(&name) {
                    Some((v, _, report)) if v == version => report,
                    _ => return,
                };
                if !report.is_failed() {
                    continue;
                }
                let snapshot = report.snapshot();
                let failing = AutoRollback {
                    from: version,
                    to: plugins.info(&name).map_or(0, |info| info.version),
                    errors: snapshot.counts.canary_errors,
                    calls: snapshot.counts.canary_messages + snapshot.counts.canary_errors,
                    at: now_ms(),
                    canary: snapshot.failed,
                };
                let _ = router.send(Command::AutoRollback { name, failing });
                return;
            }
        });
    }

    /// Starts watching the canaries recovered at startup.
    pub(super) fn watch_recovered_canaries(&self) {
        for (name, trial) in &self.versions.trials {
            if let TrialMode::Canary { .. } = trial.mode {
                self.watch_canary(name.clone(), trial.version);
            }
        }
    }

    /// A canary judged failing: ends the trial (stored) and records it as the plugin's
    /// last automatic rollback.
    pub(super) fn canary_failed(&mut self, name: String, failing: AutoRollback) {
        if self.versions.trials.get(&name).map(|t| t.version) != Some(failing.from) {
            return;
        }
        self.versions.trials.remove(&name);
        self.trial_store_ops(&name, failing.from, Purpose::Promote);
        self.plugins.end_trial(&name);
        tracing::warn!(
            plugin = %name, version = failing.from, errors = failing.errors,
            messages = failing.calls, cause = failing.canary.as_deref().unwrap_or("?"),
            "canary version failing; rolled back automatically"
        );
        self.versions.auto_rollbacks.insert(name, failing);
    }

    /// `plugin_shadow`: what the version on trial has done since it started (or since
    /// the broker did): counts and the newest differences, with binding ids shown as
    /// their queues and keys.
    pub(super) fn plugin_shadow(&self, name: &str) -> Result<Reply, OpError> {
        if self.plugins.info(name).is_none() {
            let message = format!("no exchange plugin `{name}`");
            return Err(OpError::new(ErrorCode::PluginNotFound, message));
        }
        let mut status = TrialStatus {
            name: name.to_owned(),
            active_version: self.versions.active.get(name).copied(),
            trial: None,
            report: None,
        };
        let Some((version, mode, report)) = self.plugins.trial(name) else {
            return Ok(Reply::Ok(status.into()));
        };
        let snapshot = report.snapshot();
        status.trial = Some(PluginTrialRecord { version, mode });
        status.report = Some(TrialFigures {
            counts: snapshot.counts,
            failing: snapshot.failed,
            examples: snapshot
                .examples
                .iter()
                .map(|d| self.route_difference(d))
                .collect(),
        });
        Ok(Reply::Ok(status.into()))
    }

    /// A difference with its binding ids shown as their queues and keys.
    fn route_difference(&self, d: &Difference) -> RouteDifference {
        let exchange = self.topology.exchanges.get(&d.exchange);
        let bindings = |ids: &[BindingId]| RoutedTo::Bindings {
            bindings: ids
                .iter()
                .map(|id| {
                    let binding = exchange.and_then(|e| e.bindings.get(id));
                    BindingTarget {
                        binding: *id,
                        key: binding.map(|b| b.key.clone()),
                        queue: binding.map(|b| crate::vhost::local(&b.queue).to_owned()),
                    }
                })
                .collect(),
        };
        RouteDifference {
            at: d.at,
            exchange: crate::vhost::local(&d.exchange).to_owned(),
            routing_key: d.routing_key.clone(),
            headers: d.headers.clone(),
            active: bindings(&d.active),
            shadow: match &d.shadow {
                Ok(ids) => bindings(ids),
                Err(reason) => RoutedTo::Failed {
                    error: reason.clone(),
                },
            },
        }
    }

    fn send_trial_frame(&self, conn: ConnId, frame: ServerFrame) {
        if let Some(c) = self.conns.get(&conn) {
            let _ = c.tx.send(Outbound::Frame(frame));
        }
    }
}

fn no_trial(name: &str) -> OpError {
    OpError::new(
        ErrorCode::PreconditionFailed,
        format!("plugin `{name}` has no shadow or canary version"),
    )
}

/// Starts the stored trials in the host at startup (after the active versions), from the
/// artifact cache when it holds them; adds the store writes caching what had to be
/// compiled to `compiled`. A trial that cannot start is logged and left stored.
pub(crate) fn restore_trials(
    host: &PluginHost,
    recovered: &mut Recovered,
    compiled: &mut WriteBatch,
) {
    for (name, trial) in &recovered.plugin_trials {
        let stored = recovered
            .plugin_versions
            .iter()
            .find(|v| v.name == *name && v.version == trial.version);
        let Some(stored) = stored else {
            tracing::error!(plugin = %name, version = trial.version, "plugin trial not restored: version not stored");
            continue;
        };
        let key = host.artifact_key(&stored.hash);
        let source = PluginSource {
            name: name.clone(),
            version: trial.version,
            wasm: stored.wasm.clone(),
            compiled: recovered.plugin_artifacts.get(&key).cloned(),
        };
        let prepared = match host.compile_blocking(&source) {
            Ok(prepared) => prepared,
            Err(e) => {
                tracing::error!(plugin = %name, version = trial.version, error = %e, "plugin trial not restored");
                continue;
            }
        };
        if let Some(artifact) = prepared.artifact() {
            recovered
                .plugin_artifacts
                .insert(key.clone(), artifact.clone().into());
            compiled
                .ops
                .push(StoreOp::PutPluginArtifact { key, artifact });
        }
        match host.start_trial(prepared, trial.mode) {
            Ok(_) => {
                tracing::info!(plugin = %name, version = trial.version, mode = ?trial.mode, "plugin trial restored")
            }
            Err(e) => {
                tracing::error!(plugin = %name, version = trial.version, error = %e, "plugin trial not restored")
            }
        }
    }
}
