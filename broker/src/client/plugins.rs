//! Plugins through the client: deploy, rollback, prune, reset, list, history, logs.

use super::{Client, ClientError};
use crate::protocol::Op;

impl Client {
    /// Deploys a new version of Wasm exchange plugin `name` (an exchange type). Returns
    /// what the broker reports: name, version, hash, ABI version, capabilities, size,
    /// compile time (or `unchanged: true` when these are the active version's bytes).
    pub async fn deploy_plugin(
        &self,
        name: &str,
        wasm: &[u8],
    ) -> Result<serde_json::Value, ClientError> {
        self.deploy_plugin_with(name, wasm, false).await
    }

    /// Deploys a new version of exchange plugin `name` on trial next to the active one:
    /// as a shadow (`TrialMode::Shadow`: runs on live traffic without effect) or a canary
    /// (`TrialMode::Canary`: routes that share of the messages). The result also names the
    /// `trial` and the `active_version`.
    pub async fn deploy_plugin_trial(
        &self,
        name: &str,
        wasm: &[u8],
        mode: crate::plugin::TrialMode,
    ) -> Result<serde_json::Value, ClientError> {
        use base64::Engine as _;
        let (shadow, canary_percent) = match mode {
            crate::plugin::TrialMode::Shadow => (true, None),
            crate::plugin::TrialMode::Canary { percent } => (false, Some(percent)),
        };
        let op = Op::DeployPlugin {
            name: name.to_owned(),
            wasm_base64: base64::engine::general_purpose::STANDARD.encode(wasm),
            deployed_by: None,
            auto_rollback: false,
            shadow,
            canary_percent,
        };
        self.send(op, None, true).await
    }

    /// Makes plugin `name`'s shadow or canary version the active one (stored first).
    pub async fn promote_plugin(&self, name: &str) -> Result<serde_json::Value, ClientError> {
        let op = Op::PromotePlugin {
            name: name.to_owned(),
        };
        self.send(op, None, true).await
    }

    /// What plugin `name`'s shadow or canary version has done: `compared`, `differed`,
    /// `shadow_failures`, `canary_messages`, `canary_errors`, the newest `examples`
    /// (`trial` is null when it has none).
    pub async fn plugin_shadow(&self, name: &str) -> Result<serde_json::Value, ClientError> {
        let op = Op::PluginShadow {
            name: name.to_owned(),
        };
        self.send(op, None, true).await
    }

    /// [`Client::deploy_plugin`]; with `auto_rollback`, the broker goes back to the
    /// previously active version if this one starts failing.
    pub async fn deploy_plugin_with(
        &self,
        name: &str,
        wasm: &[u8],
        auto_rollback: bool,
    ) -> Result<serde_json::Value, ClientError> {
        use base64::Engine as _;
        let op = Op::DeployPlugin {
            name: name.to_owned(),
            wasm_base64: base64::engine::general_purpose::STANDARD.encode(wasm),
            // The broker records the user this client logged in as.
            deployed_by: None,
            auto_rollback,
            shadow: false,
            canary_percent: None,
        };
        self.send(op, None, true).await
    }

    /// Activates an earlier version of a plugin (`version`, or the one before the active).
    pub async fn rollback_plugin(
        &self,
        name: &str,
        version: Option<u64>,
    ) -> Result<serde_json::Value, ClientError> {
        let op = Op::RollbackPlugin {
            name: name.to_owned(),
            version,
        };
        self.send(op, None, true).await
    }

    /// Deletes the stored versions of plugin `name` but the newest `keep` (and the active
    /// one and the one before it); the result lists `pruned` and `kept` versions.
    pub async fn prune_plugin(
        &self,
        name: &str,
        keep: u64,
    ) -> Result<serde_json::Value, ClientError> {
        let op = Op::PrunePlugin {
            name: name.to_owned(),
            keep,
        };
        self.send(op, None, true).await
    }

    /// Deletes custom plugin `name` with every stored version (refused while an exchange
    /// is of its type or a handler attachment runs it); the result lists `deleted` versions.
    pub async fn delete_plugin(&self, name: &str) -> Result<serde_json::Value, ClientError> {
        let op = Op::DeletePlugin {
            name: name.to_owned(),
        };
        self.send(op, None, true).await
    }

    /// Lifts quarantine for every exchange of plugin `name`; the result's `reset` lists
    /// the exchanges that were quarantined.
    pub async fn reset_plugin(&self, name: &str) -> Result<serde_json::Value, ClientError> {
        let op = Op::ResetPlugin {
            name: name.to_owned(),
        };
        self.send(op, None, true).await
    }

    /// Every exchange type with its active version and counters.
    pub async fn list_plugins(&self) -> Result<serde_json::Value, ClientError> {
        self.send(Op::ListPlugins, None, true).await
    }

    /// Every deployed version of a plugin.
    pub async fn plugin_history(&self, name: &str) -> Result<serde_json::Value, ClientError> {
        let op = Op::PluginHistory {
            name: name.to_owned(),
        };
        self.send(op, None, true).await
    }

    /// Plugin `name`'s kept log lines numbered above `after` (at most the newest
    /// `limit`); the reply's `lines` and `last_seq`.
    pub async fn plugin_logs(
        &self,
        name: &str,
        after: u64,
        limit: usize,
    ) -> Result<serde_json::Value, ClientError> {
        let op = Op::PluginLogs {
            name: name.to_owned(),
            after,
            limit,
        };
        self.send(op, None, true).await
    }
}
