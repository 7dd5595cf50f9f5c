//! Plugin listings: `list_plugins` (every type with its versions' counters, its trial,
//! its last automatic rollback, its quarantined exchanges) and `plugin_history`.

use super::{OpError, Reply, Router};
use crate::plugin::StatsSnapshot;
use crate::protocol::{
    ErrorCode, ExchangePluginRow, HistoryEntry, PluginHistory, PluginList, PluginRow,
    QuarantinedExchange, VersionCounts,
};

impl Router {
    pub(super) fn list_plugins(&self) -> Reply {
        let mut plugins: Vec<PluginRow> = self
            .plugins
            .plugins()
            .into_iter()
            .map(|info| {
                let stats = self.plugins.stats(&info.name).unwrap_or_default();
                let mut row = self.plugin_row(info.name.clone(), "exchange", info.bundled, stats);
                row.exchange = Some(ExchangePluginRow {
                    from_cache: info.from_cache,
                    last_auto_rollback: self.versions.auto_rollbacks.get(&info.name).cloned(),
                    trial: self.versions.trials.get(&info.name).cloned(),
                    quarantined: self.quarantined_exchanges(&info.name),
                });
                row
            })
            .collect();
        for (name, bundled, stats) in self.plugins.handler_plugins() {
            let stats = stats.unwrap_or_default();
            plugins.push(self.plugin_row(name, "handler", bundled, stats));
        }
        Reply::Ok(PluginList { plugins }.into())
    }

    /// What `list_plugins` shows of every plugin, exchange or handler.
    fn plugin_row(
        &self,
        name: String,
        kind: &'static str,
        bundled: bool,
        stats: StatsSnapshot,
    ) -> PluginRow {
        let active = self.versions.active.get(&name).copied();
        let hash = active.and_then(|v| {
            let versions = self.versions.deployed.get(&name)?;
            versions
                .iter()
                .find(|p| p.version == v)
                .map(|p| p.hash.clone())
        });
        PluginRow {
            versions: self.version_counts(&name),
            name,
            kind,
            bundled,
            active_version: active,
            hash,
            calls: stats.calls,
            errors: stats.errors,
            p99_call_us: stats.call_p99().map(|d| d.as_secs_f64() * 1e6),
            stats,
            exchange: None,
        }
    }

    /// The quarantined exchanges of type `name`: exchange, since (ms since the Unix
    /// epoch), reason.
    fn quarantined_exchanges(&self, name: &str) -> Vec<QuarantinedExchange> {
        let mut quarantined: Vec<_> = self
            .topology
            .exchanges
            .iter()
            .filter(|(_, e)| e.kind == name)
            .filter_map(|(exchange, _)| {
                let (since, reason) = self.plugins.quarantine(exchange)?;
                let exchange = exchange.to_string();
                Some(QuarantinedExchange {
                    exchange,
                    since,
                    reason,
                })
            })
            .collect();
        quarantined.sort_by(|a, b| a.exchange.cmp(&b.exchange));
        quarantined
    }

    /// Messages, calls and errors of each version of plugin `name` since startup.
    fn version_counts(&self, name: &str) -> Vec<VersionCounts> {
        let versions = self.plugins.version_stats(name).into_iter();
        versions
            .map(|(version, stats)| VersionCounts {
                version,
                messages: stats.messages,
                calls: stats.calls,
                errors: stats.errors,
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
        let trial = self.versions.trials.get(name);
        let versions = versions
            .iter()
            .map(|v| HistoryEntry {
                version: v.clone(),
                active: Some(v.version) == active,
                trial: trial.filter(|t| t.version == v.version).map(|t| t.mode),
            })
            .collect();
        let history = PluginHistory {
            name: name.to_owned(),
            versions,
        };
        Ok(Reply::Ok(history.into()))
    }
}
