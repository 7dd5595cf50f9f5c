//! Plugin storage: deleting old versions, on request (`prune_plugin`) or after each deploy
//! when a retention is set (`--keep-plugin-versions`), so storage does not grow with every
//! deploy. The active version and the one before it (what a rollback, automatic or not,
//! goes back to) are always kept. And deleting a whole plugin nothing uses any more
//! (`delete_plugin`).

use std::collections::HashSet;

use super::{Answer, OpError, Reply, Router};
use crate::protocol::{ErrorCode, PluginDeleted, PluginPruned};
use crate::store::StoreOp;

impl Router {
    pub(super) fn prune_plugin(&mut self, name: &str, keep: u64) -> Result<Reply, OpError> {
        if keep == 0 {
            return Err(OpError::new(
                ErrorCode::InvalidField,
                "`keep` must be at least 1",
            ));
        }
        if !self.versions.deployed.contains_key(name) {
            let message = format!("no deployed plugin `{name}` (bundled types have no versions)");
            return Err(OpError::new(ErrorCode::PluginNotFound, message));
        }
        if self.versions.deploys.contains_key(name) || self.versions.committing.contains_key(name) {
            let message = format!("a deploy or rollback of `{name}` is in progress");
            return Err(OpError::new(ErrorCode::PreconditionFailed, message));
        }
        let (pruned, kept) = self.prune_versions(name, keep);
        let nothing_pruned = pruned.is_empty();
        let result = Answer::from(PluginPruned {
            name: name.to_owned(),
            pruned,
            kept,
        });
        Ok(match nothing_pruned {
            true => Reply::Ok(result),
            false => Reply::OkAfterCommit(result),
        })
    }

    /// Deletes custom plugin `name` with every version, once no exchange is of its type
    /// and no handler attachment runs it.
    pub(super) fn delete_plugin(&mut self, name: &str) -> Result<Reply, OpError> {
        if !self.versions.deployed.contains_key(name) {
            let message =
                format!("no deployed plugin `{name}` (bundled plugins cannot be deleted)");
            return Err(OpError::new(ErrorCode::PluginNotFound, message));
        }
        if self.versions.deploys.contains_key(name) || self.versions.committing.contains_key(name) {
            let message = format!("a deploy or rollback of `{name}` is in progress");
            return Err(OpError::new(ErrorCode::PreconditionFailed, message));
        }
        let mut users: Vec<String> = self
            .topology
            .exchanges
            .iter()
            .filter(|(_, e)| e.kind == name)
            .map(|(x, _)| format!("exchange `{}`", crate::vhost::local(x)))
            .chain(
                self.topology
                    .unrestored
                    .iter()
                    .filter(|(_, w)| w.record.kind == name)
                    .map(|(x, _)| format!("exchange `{}`", crate::vhost::local(x))),
            )
            .chain(
                self.attached_queues(name)
                    .into_iter()
                    .map(|q| format!("a handler on queue `{}`", crate::vhost::local(&q))),
            )
            .collect();
        if !users.is_empty() {
            users.sort();
            let message = format!("plugin `{name}` is in use by {}", users.join(", "));
            return Err(OpError::new(ErrorCode::PreconditionFailed, message));
        }
        let versions = self.versions.deployed.remove(name).unwrap_or_default();
        for version in &versions {
            self.turn.store(StoreOp::DeletePluginVersion {
                name: name.to_string(),
                version: version.version,
            });
        }
        self.delete_unused_artifacts(&versions);
        if self.versions.active.remove(name).is_some() {
            self.turn
                .store(StoreOp::ClearActivePlugin(name.to_string()));
        }
        self.versions.auto_rollbacks.remove(name);
        if self.versions.trials.remove(name).is_some() {
            let trial = None;
            let name = name.to_string();
            self.turn.store(StoreOp::SetPluginTrial { name, trial });
        }
        self.plugins.unload(name);
        tracing::info!(plugin = %name, versions = versions.len(), "plugin deleted");
        let deleted: Vec<u64> = versions.iter().map(|v| v.version).collect();
        let name = name.to_owned();
        Ok(Reply::OkAfterCommit(PluginDeleted { name, deleted }.into()))
    }

    /// After a new version of `name` went active: applies the retention, if any.
    pub(super) fn apply_plugin_retention(&mut self, name: &str) {
        let Some(keep) = self.versions.keep else {
            return;
        };
        if self.versions.deploys.contains_key(name) || self.versions.committing.contains_key(name) {
            return; // the last deploy of the queue prunes
        }
        let (pruned, _) = self.prune_versions(name, keep);
        if !pruned.is_empty() {
            tracing::info!(plugin = %name, ?pruned, keep, "old plugin versions deleted (retention)");
        }
    }

    /// Deletes the versions of `name` but the newest `keep`, the active one and the one
    /// before it; returns (deleted, kept) version numbers.
    fn prune_versions(&mut self, name: &str, keep: u64) -> (Vec<u64>, Vec<u64>) {
        let active = self.versions.active.get(name).copied();
        let Some(versions) = self.versions.deployed.get_mut(name) else {
            return (Vec::new(), Vec::new());
        };
        let before_active = versions
            .iter()
            .rev()
            .find(|v| Some(v.version) < active)
            .map(|v| v.version);
        let newest: HashSet<u64> = versions
            .iter()
            .rev()
            .take(keep as usize)
            .map(|v| v.version)
            .collect();
        let trial = self.versions.trials.get(name).map(|t| t.version);
        let stays = |v: u64| {
            newest.contains(&v) || Some(v) == active || Some(v) == before_active || Some(v) == trial
        };
        let (kept, pruned): (Vec<_>, Vec<_>) = std::mem::take(versions)
            .into_iter()
            .partition(|v| stays(v.version));
        *versions = kept;
        let kept: Vec<u64> = versions.iter().map(|v| v.version).collect();
        for version in &pruned {
            self.turn.store(StoreOp::DeletePluginVersion {
                name: name.to_string(),
                version: version.version,
            });
        }
        self.delete_unused_artifacts(&pruned);
        (pruned.iter().map(|v| v.version).collect(), kept)
    }

    /// Compiled code is stored by content: deletes that of `deleted` versions when no
    /// version left has it.
    fn delete_unused_artifacts(&mut self, deleted: &[crate::store::PluginVersion]) {
        let hashes_left: HashSet<&str> = self
            .versions
            .deployed
            .values()
            .flatten()
            .map(|v| v.hash.as_str())
            .collect();
        let mut gone: Vec<String> = deleted
            .iter()
            .filter(|v| !hashes_left.contains(v.hash.as_str()))
            .map(|v| self.plugins.artifact_key(&v.hash))
            .collect();
        gone.dedup();
        for key in gone {
            if self.versions.artifacts.remove(&key).is_some() {
                self.turn.store(StoreOp::DeletePluginArtifact(key));
            }
        }
    }
}
