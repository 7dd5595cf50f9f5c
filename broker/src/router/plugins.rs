//! Plugin versions: deploy, rollback, list, history, automatic rollback.
//!
//! Every deploy ends in the same path, whether it came over a connection, from the
//! plugins directory or from an automatic rollback: the version is numbered, compiled and
//! validated off the router's task (a bad upload is refused and the old version keeps
//! running), then stored with its bytes, its compiled artifact and the active pointer;
//! the host swaps it in once that commit is durable, then the deployer is answered. At
//! startup the stored active versions are loaded (from the artifact cache when valid)
//! before exchanges are recovered.

use std::time::{Duration, Instant};

use bytes::Bytes;

use super::trials::DeployAs;
use super::{Answer, Command, OpError, Outbound, Reply, Router};
use crate::clock::now_ms;
use crate::plugin::{LoadError, PluginSource, PreparedPlugin, content_hash};
use crate::protocol::{
    AutoRollback, ErrorCode, PluginActivated, PluginCompiled, PluginDeployed, PluginReset,
    RequestId, ServerFrame,
};
use crate::queue::ConnId;
use crate::store::{CommitError, PluginVersion, StoreOp};

/// What a prepared version is for once stored.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Purpose {
    /// Becomes the active version (deploy, rollback).
    Activate,
    /// Runs on trial next to the active version (shadow or canary deploy).
    Trial(crate::plugin::TrialMode),
    /// The version on trial becomes the active one, ending the trial.
    Promote,
}

/// A deploy or rollback waiting for (or in) compilation.
#[derive(Debug, Clone)]
pub(super) struct DeployJob {
    requester: Option<(ConnId, RequestId)>,
    purpose: Purpose,
    /// A new version to store (deploy), or an earlier one (rollback).
    version: PluginVersion,
    is_new: bool,
    auto_rollback: bool,
    /// Set for an automatic rollback: recorded for `list_plugins` once it is stored.
    automatic: Option<AutoRollback>,
}

/// A version compiled (or refused) off the router's task, for the router to record.
#[derive(Debug)]
pub struct Prepared {
    /// Who to answer (none for automatic rollbacks).
    pub requester: Option<(ConnId, RequestId)>,
    pub purpose: Purpose,
    /// A new version to store (deploy), or an earlier one (rollback).
    pub version: PluginVersion,
    pub is_new: bool,
    pub auto_rollback: bool,
    pub automatic: Option<AutoRollback>,
    pub compile_time: Duration,
    pub result: Result<PreparedPlugin, LoadError>,
}

/// A prepared version whose commit has ended, for the router to make active (or, when
/// the commit failed, to forget).
#[derive(Debug)]
pub struct Stored {
    requester: Option<(ConnId, RequestId)>,
    purpose: Purpose,
    version: PluginVersion,
    is_new: bool,
    auto_rollback: bool,
    automatic: Option<AutoRollback>,
    /// The compiled code stored with it (artifact key, bytes), if it was compiled now.
    artifact: Option<(String, Bytes)>,
    /// The reply's result, when the commit succeeded.
    result: PluginDeployed,
    prepared: PreparedPlugin,
    committed: Result<(), CommitError>,
}

/// When a version watched for automatic rollback is judged failing: at least this many
/// failed calls, making up at least a tenth of its calls.
const AUTO_ROLLBACK_MIN_ERRORS: u64 = 5;
pub(super) const AUTO_ROLLBACK_CHECK: Duration = Duration::from_millis(200);

impl Router {
    pub(super) fn deploy_plugin(
        &mut self,
        conn: ConnId,
        id: RequestId,
        name: String,
        wasm_base64: &str,
        deployed_by: Option<String>,
        how: DeployAs,
    ) -> Result<Reply, OpError> {
        let (auto_rollback, trial) = match how {
            DeployAs::Active { auto_rollback } => (auto_rollback, None),
            DeployAs::Trial(mode) => {
                self.check_trial_deploy(&name)?;
                (false, Some(mode))
            }
        };
        use base64::Engine as _;
        let wasm = base64::engine::general_purpose::STANDARD
            .decode(wasm_base64.as_bytes())
            .map_err(|e| OpError::new(ErrorCode::InvalidField, format!("`wasm_base64`: {e}")))?;
        let hash = content_hash(&wasm);
        let running = self.plugins.info(&name).map(|info| info.version);
        if let Some(active) = self.active_version(&name)
            && active.hash == hash
            && running == Some(active.version)
            && trial.is_none()
            && !self.versions.deploys.contains_key(&name)
            && !self.versions.committing.contains_key(&name)
        {
            // Redeploying the running bytes (a restart's plugins directory, a touched
            // file) is not a new version; behind a queued deploy it would be one.
            let unchanged = PluginDeployed {
                name,
                version: active.version,
                hash,
                unchanged: true,
                compiled: None,
                activated: None,
                on_trial: None,
            };
            return Ok(Reply::Ok(unchanged.into()));
        }
        let stored = self
            .versions
            .deployed
            .get(&name)
            .and_then(|v| v.last())
            .map_or(0, |v| v.version);
        // Versions compiling or waiting for their commit hold their numbers too.
        let queued = self.versions.deploys.get(&name).into_iter().flatten();
        let committing = self
            .versions
            .committing
            .get(&name)
            .into_iter()
            .flatten()
            .copied();
        let number = queued
            .map(|job| job.version.version)
            .chain(committing)
            .fold(stored, u64::max)
            + 1;
        let version = PluginVersion {
            hash,
            name,
            version: number,
            deployed_at: now_ms(),
            // Unless it says otherwise: the user it logged in as (the broker's own
            // sessions have none).
            deployed_by: deployed_by.unwrap_or_else(|| {
                let user = self.conns.get(&conn).and_then(|c| c.user.as_ref());
                user.map_or_else(|| format!("connection {conn}"), |p| p.user.to_string())
            }),
            size_bytes: wasm.len() as u64,
            wasm: wasm.into(),
        };
        let purpose = trial.map_or(Purpose::Activate, Purpose::Trial);
        self.queue_deploy(
            Some((conn, id)),
            version,
            true,
            auto_rollback,
            None,
            purpose,
        );
        Ok(Reply::Silent)
    }

    pub(super) fn rollback_plugin(
        &mut self,
        conn: ConnId,
        id: RequestId,
        name: &str,
        to: Option<u64>,
    ) -> Result<Reply, OpError> {
        if to.is_none() && self.versions.trials.contains_key(name) {
            return self.drop_trial(name);
        }
        let target = self.rollback_target(name, to)?;
        self.queue_deploy(
            Some((conn, id)),
            target,
            false,
            false,
            None,
            Purpose::Activate,
        );
        Ok(Reply::Silent)
    }

    /// Version `to` of `name`, or the one before the active one.
    fn rollback_target(&self, name: &str, to: Option<u64>) -> Result<PluginVersion, OpError> {
        let Some(versions) = self.versions.deployed.get(name) else {
            let message = format!("no deployed plugin `{name}` (bundled types have no versions)");
            return Err(OpError::new(ErrorCode::PluginNotFound, message));
        };
        let active = self.versions.active.get(name).copied();
        let target = match to {
            Some(v) => versions.iter().find(|p| p.version == v),
            None => versions.iter().rev().find(|p| Some(p.version) < active),
        };
        target.cloned().ok_or_else(|| {
            let message = match to {
                Some(v) => format!("plugin `{name}` has no version {v}"),
                None => format!("plugin `{name}` has no version before the active one"),
            };
            OpError::new(ErrorCode::PluginNotFound, message)
        })
    }

    fn active_version(&self, name: &str) -> Option<&PluginVersion> {
        let active = self.versions.active.get(name)?;
        self.versions
            .deployed
            .get(name)?
            .iter()
            .find(|v| v.version == *active)
    }

    /// Queues a deploy or rollback of `version`; those of one plugin are carried out one
    /// at a time, in the order they came, so the last one asked for is the one active.
    pub(super) fn queue_deploy(
        &mut self,
        requester: Option<(ConnId, RequestId)>,
        version: PluginVersion,
        is_new: bool,
        auto_rollback: bool,
        automatic: Option<AutoRollback>,
        purpose: Purpose,
    ) {
        let job = DeployJob {
            requester,
            purpose,
            version,
            is_new,
            auto_rollback,
            automatic,
        };
        let name = job.version.name.clone();
        let queue = self.versions.deploys.entry(name.clone()).or_default();
        queue.push_back(job);
        if queue.len() == 1 {
            self.start_next_deploy(&name);
        }
    }

    /// Compiles and validates the first queued version of `name` off the router's task
    /// (from the artifact cache when it holds it), then reports back as
    /// [`Command::PluginPrepared`].
    fn start_next_deploy(&self, name: &str) {
        let Some(DeployJob {
            requester,
            purpose,
            version,
            is_new,
            auto_rollback,
            automatic,
        }) = self
            .versions
            .deploys
            .get(name)
            .and_then(|q| q.front())
            .cloned()
        else {
            return;
        };
        let key = self.plugins.artifact_key(&version.hash);
        let source = PluginSource {
            name: version.name.clone(),
            version: version.version,
            wasm: version.wasm.clone(),
            compiled: self.versions.artifacts.get(&key).cloned(),
        };
        let (plugins, router) = (self.plugins.clone(), self.self_tx.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            let result = plugins.compile(source).await;
            let prepared = Prepared {
                requester,
                purpose,
                version,
                is_new,
                auto_rollback,
                automatic,
                compile_time: started.elapsed(),
                result,
            };
            let _ = router.send(Command::PluginPrepared(Box::new(prepared)));
        });
    }

    /// Stores a prepared version (with its compiled artifact when new, and as the active
    /// version); [`Router::plugin_stored`] makes it active once that commit is durable.
    pub(super) fn plugin_prepared(&mut self, prepared: Prepared) {
        let Prepared {
            requester,
            purpose,
            version,
            is_new,
            auto_rollback,
            automatic,
            compile_time,
            result,
        } = prepared;
        if let Some(queue) = self.versions.deploys.get_mut(&version.name) {
            queue.pop_front();
            if queue.is_empty() {
                self.versions.deploys.remove(&version.name);
            } else {
                self.start_next_deploy(&version.name);
            }
        }
        let prepared = match result {
            Ok(prepared) => prepared,
            Err(e) => {
                tracing::warn!(plugin = %version.name, version = version.version, error = %e, "plugin version refused; the active version stays");
                if let Some((conn, id)) = requester {
                    let frame =
                        ServerFrame::error(Some(id), ErrorCode::InvalidPlugin, e.to_string());
                    self.send_frame(conn, frame);
                }
                return;
            }
        };
        if !self.trial_may_proceed(
            &version.name,
            version.version,
            purpose,
            &prepared,
            requester.clone(),
        ) {
            return;
        }
        if is_new {
            self.turn.store(StoreOp::PutPluginVersion(version.clone()));
        }
        let artifact = prepared.artifact().map(|artifact| {
            let key = self.plugins.artifact_key(&version.hash);
            self.turn.store(StoreOp::PutPluginArtifact {
                key: key.clone(),
                artifact: artifact.clone(),
            });
            (key, Bytes::from(artifact))
        });
        if !matches!(purpose, Purpose::Trial(_)) {
            self.turn.store(StoreOp::SetActivePlugin {
                name: version.name.clone(),
                version: version.version,
            });
        }
        self.trial_store_ops(&version.name, version.version, purpose);
        // The router's own record (versions, active version, artifacts) follows the
        // commit: until it is known, the version is neither listed nor running.
        self.versions
            .committing
            .entry(version.name.clone())
            .or_default()
            .push(version.version);
        let info = prepared.info().clone();
        let result = PluginDeployed {
            name: version.name.clone(),
            version: version.version,
            hash: version.hash.clone(),
            unchanged: false,
            compiled: Some(PluginCompiled {
                abi_version: info.abi_version,
                capabilities: info.capabilities,
                size_bytes: version.size_bytes,
                compile_ms: compile_time.as_secs_f64() * 1e3,
            }),
            activated: None,
            on_trial: None,
        };
        let stored = Stored {
            requester,
            purpose,
            version,
            is_new,
            auto_rollback,
            automatic,
            artifact,
            result,
            prepared,
            committed: Ok(()),
        };
        let router = self.self_tx.clone();
        self.turn.on_commit(Box::new(move |committed| {
            let stored = Stored {
                committed,
                ..stored
            };
            let _ = router.send(Command::PluginStored(Box::new(stored)));
        }));
    }

    /// A deployed or rolled-back version's commit ended: on success it becomes the active
    /// version (listed, running, watched when asked) and the requester gets `ok`; on
    /// failure nothing changes but the `store_error` reply.
    pub(super) fn plugin_stored(&mut self, stored: Stored) {
        let Stored {
            requester,
            purpose,
            version,
            is_new,
            auto_rollback,
            automatic,
            artifact,
            mut result,
            prepared,
            committed,
        } = stored;
        let name = version.name.clone();
        if let Some(pending) = self.versions.committing.get_mut(&name) {
            if let Some(at) = pending.iter().position(|v| *v == version.version) {
                pending.remove(at);
            }
            if pending.is_empty() {
                self.versions.committing.remove(&name);
            }
        }
        if let Err(e) = committed {
            tracing::error!(plugin = %name, version = version.version, error = %e, "plugin version not stored; not activated");
            if let Some((conn, id)) = requester {
                let frame = ServerFrame::error(Some(id), ErrorCode::StoreError, e.to_string());
                self.send_frame(conn, frame);
            }
            return;
        }
        if let Some((key, artifact)) = artifact {
            self.versions.artifacts.insert(key, artifact);
        }
        let number = version.version;
        let log = (version.hash.clone(), version.deployed_by.clone(), !is_new);
        if is_new {
            let versions = self.versions.deployed.entry(name.clone()).or_default();
            let at = versions.partition_point(|v| v.version < number);
            versions.insert(at, version);
        }
        if let Purpose::Trial(mode) = purpose {
            self.trial_stored(&name, number, mode, prepared, requester, result);
            if is_new {
                self.apply_plugin_retention(&name);
            }
            return;
        }
        let previous = self.versions.active.insert(name.clone(), number);
        if let Some(automatic) = automatic {
            self.versions.auto_rollbacks.insert(name.clone(), automatic);
        }
        if purpose == Purpose::Promote {
            self.versions.trials.remove(&name);
            self.plugins.install_ending_trial(prepared);
        } else {
            self.plugins.install(prepared);
        }
        let (hash, deployed_by, rollback) = log;
        tracing::info!(plugin = %name, version = number, %hash, %deployed_by, rollback, "plugin version active");
        let watched = auto_rollback && previous.is_some();
        result.activated = Some(PluginActivated {
            auto_rollback: watched,
            promoted: purpose == Purpose::Promote,
        });
        if let Some((conn, id)) = requester {
            let result = Answer::from(result).into_json();
            self.send_frame(conn, ServerFrame::Ok { id, result });
        }
        if watched && let Some(previous) = previous {
            self.watch_for_rollback(name.clone(), number, previous);
        }
        self.restore_waiting_exchanges(&name);
        if is_new {
            self.apply_plugin_retention(&name);
        }
    }

    /// Sends `frame` to connection `conn`, if it is still open.
    fn send_frame(&self, conn: ConnId, frame: ServerFrame) {
        if let Some(c) = self.conns.get(&conn) {
            let _ = c.tx.send(Outbound::Frame(frame));
        }
    }

    /// Watches version `version` of `name` while it is active; when its calls start
    /// failing, asks the router to roll back to `previous`.
    fn watch_for_rollback(&self, name: String, version: u64, previous: u64) {
        let (plugins, router) = (self.plugins.clone(), self.self_tx.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(AUTO_ROLLBACK_CHECK);
            loop {
                tick.tick().await;
                // Started once the version is active; it stops being watched when replaced.
                match plugins.info(&name) {
                    Some(active) if active.version == version => {}
                    _ => return,
                }
                let stats = plugins
                    .version_stats(&name)
                    .into_iter()
                    .find(|(v, _)| *v == version)
                    .map(|(_, s)| s)
                    .unwrap_or_default();
                if stats.errors >= AUTO_ROLLBACK_MIN_ERRORS && stats.errors * 10 >= stats.calls {
                    let failing = AutoRollback {
                        from: version,
                        to: previous,
                        errors: stats.errors,
                        calls: stats.calls,
                        at: now_ms(),
                        canary: None,
                    };
                    let _ = router.send(Command::AutoRollback { name, failing });
                    return;
                }
            }
        });
    }

    /// Rolls `name` back from a failing version, if that version is still the active one.
    pub(super) fn auto_rollback(&mut self, name: String, failing: AutoRollback) {
        if failing.canary.is_some() {
            return self.canary_failed(name, failing);
        }
        if self.versions.active.get(&name) != Some(&failing.from) {
            return;
        }
        let target = match self.rollback_target(&name, Some(failing.to)) {
            Ok(target) => target,
            Err(e) => {
                tracing::error!(plugin = %name, error = %e.message, "automatic rollback impossible");
                return;
            }
        };
        tracing::warn!(
            plugin = %name, from = failing.from, to = failing.to, errors = failing.errors,
            calls = failing.calls, "plugin version failing; rolling back automatically"
        );
        self.queue_deploy(None, target, false, false, Some(failing), Purpose::Activate);
    }

    /// Lifts quarantine for every exchange of plugin `name`; answers which were lifted.
    pub(super) fn reset_plugin(&self, name: &str) -> Result<Reply, OpError> {
        if self.plugins.info(name).is_none() && !self.plugins.is_handler(name) {
            let message = format!("no plugin `{name}`");
            return Err(OpError::new(ErrorCode::PluginNotFound, message));
        }
        let lifted = self.plugins.reset_plugin(name);
        if !lifted.is_empty() {
            tracing::info!(plugin = name, exchanges = ?lifted, "quarantine lifted by reset");
        }
        let name = name.to_owned();
        Ok(Reply::Ok(
            PluginReset {
                name,
                reset: lifted,
            }
            .into(),
        ))
    }
}

/// The recovered plugin versions, grouped by name in version order.
pub(super) fn group_versions(
    versions: Vec<PluginVersion>,
) -> std::collections::BTreeMap<String, Vec<PluginVersion>> {
    let mut grouped: std::collections::BTreeMap<String, Vec<PluginVersion>> = Default::default();
    for version in versions {
        grouped
            .entry(version.name.clone())
            .or_default()
            .push(version);
    }
    for versions in grouped.values_mut() {
        versions.sort_by_key(|v| v.version);
    }
    grouped
}
