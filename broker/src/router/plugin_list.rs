//! Plugin listings: `list_plugins` (every type with its versions' counters, its trial,
//! its last automatic rollback, its quarantined exchanges) and `plugin_history`.

use serde_json::json;

use super::{OpError, Reply, Router};
use crate::protocol::ErrorCode;

impl Router {
    pub(super) fn list_plugins(&self) -> Reply {
        let plugins: Vec<_> = self
            .plugins
            .plugins()
            .into_iter()
            .map(|info| {
                let active = self.versions.active.get(&info.name).copied();
                let hash = active.and_then(|v| {
                    let versions = self.versions.deployed.get(&info.name)?;
                    versions
                        .iter()
                        .find(|p| p.version == v)
                        .map(|p| p.hash.clone())
                });
                let stats = self.plugins.stats(&info.name).unwrap_or_default();
                json!({
                    "name": info.name,
                    "kind": "exchange",
                    "bundled": info.bundled,
                    "active_version": active,
                    "hash": hash,
                    "from_cache": info.from_cache,
                    "calls": stats.calls,
                    "errors": stats.errors,
                    "p99_call_us": stats.call_p99().map(|d| d.as_secs_f64() * 1e6),
                    "stats": stats,
                    "versions": self.version_counts(&info.name),
                    "last_auto_rollback": self.versions.auto_rollbacks.get(&info.name),
                    "trial": self.trial_summary(&info.name),
                    "quarantined": self.quarantined_exchanges(&info.name),
                })
            })
            .collect();
        let mut plugins = plugins;
        for (name, bundled, stats) in self.plugins.handler_plugins() {
            let active = self.versions.active.get(&name).copied();
            let hash = active.and_then(|v| {
                let versions = self.versions.deployed.get(&name)?;
                versions
                    .iter()
                    .find(|p| p.version == v)
                    .map(|p| p.hash.clone())
            });
            let stats = stats.unwrap_or_default();
            plugins.push(json!({
                "name": name,
                "kind": "handler",
                "bundled": bundled,
                "active_version": active,
                "hash": hash,
                "calls": stats.calls,
                "errors": stats.errors,
                "p99_call_us": stats.call_p99().map(|d| d.as_secs_f64() * 1e6),
                "stats": stats,
                "versions": self.version_counts(&name),
            }));
        }
        Reply::Ok(json!({ "plugins": plugins }))
    }

    /// The quarantined exchanges of type `name`: exchange, since (ms since the Unix
    /// epoch), reason.
    fn quarantined_exchanges(&self, name: &str) -> Vec<serde_json::Value> {
        let mut quarantined: Vec<_> = self
            .topology
            .exchanges
            .iter()
            .filter(|(_, e)| e.kind == name)
            .filter_map(|(exchange, _)| {
                let (since, reason) = self.plugins.quarantine(exchange)?;
                Some(json!({ "exchange": exchange, "since": since, "reason": reason }))
            })
            .collect();
        quarantined.sort_by(|a, b| a["exchange"].as_str().cmp(&b["exchange"].as_str()));
        quarantined
    }

    /// Messages, calls and errors of each version of plugin `name` since startup.
    fn version_counts(&self, name: &str) -> Vec<serde_json::Value> {
        let versions = self.plugins.version_stats(name).into_iter();
        versions
            .map(|(version, stats)| {
                json!({
                    "version": version,
                    "messages": stats.messages,
                    "calls": stats.calls,
                    "errors": stats.errors,
                })
            })
            .collect()
    }

    pub(super) fn plugin_history(&self, name: &str) -> Result<Reply, OpError> {
        let versions = self.versions.deployed.get(name).ok_or_else(|| {
            OpError::new(
                ErrorCode::PluginNotFound,
                format!("no deployed plugin `{name}`"),
            )
        })?;
        let active = self.versions.active.get(name).copied();
        let versions: Vec<_> = versions
            .iter()
            .map(|v| {
                let mut entry = serde_json::to_value(v).expect("serializable");
                entry["active"] = json!(Some(v.version) == active);
                if let Some(trial) = self
                    .versions
                    .trials
                    .get(name)
                    .filter(|t| t.version == v.version)
                {
                    entry["trial"] = json!(trial.mode);
                }
                entry
            })
            .collect();
        Ok(Reply::Ok(json!({ "name": name, "versions": versions })))
    }
}
