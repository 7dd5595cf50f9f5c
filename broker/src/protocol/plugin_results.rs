//! What the plugin and handler operations answer (`deploy_plugin`, `list_plugins`,
//! `plugin_shadow`, `route`, `list_handlers`, ...): the `result` of their `ok` frames.
//! The broker only writes these; clients read them as JSON (`docs/protocol.md`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::HandlerMode;
use crate::message::Headers;
use crate::plugin::{Capabilities, LogLine, StatsSnapshot, TrialCounts, TrialMode};
use crate::store::{PluginTrialRecord, PluginVersion};

/// Result of `deploy_plugin`, `rollback_plugin` (to a version) and `promote_plugin`.
#[derive(Debug, Clone, Serialize)]
pub struct PluginDeployed {
    pub name: String,
    pub version: u64,
    pub hash: String,
    /// The bytes were the active version's: nothing new was deployed.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub unchanged: bool,
    /// What was compiled (absent when `unchanged`).
    #[serde(flatten)]
    pub compiled: Option<PluginCompiled>,
    /// How the version went active (absent for a trial).
    #[serde(flatten)]
    pub activated: Option<PluginActivated>,
    /// How it runs next to the active version (a trial deploy only).
    #[serde(flatten)]
    pub on_trial: Option<PluginOnTrial>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PluginCompiled {
    pub abi_version: String,
    pub capabilities: Capabilities,
    pub size_bytes: u64,
    pub compile_ms: f64,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct PluginActivated {
    /// Watched, and rolled back automatically if it fails.
    pub auto_rollback: bool,
    /// It was the version on trial.
    pub promoted: bool,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct PluginOnTrial {
    pub trial: TrialMode,
    pub active_version: Option<u64>,
}

/// The last automatic rollback of a plugin (`list_plugins`, `list_exchanges`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AutoRollback {
    pub from: u64,
    pub to: u64,
    pub errors: u64,
    pub calls: u64,
    pub at: u64,
    /// For a canary rolled back (its trial ended, the active version unchanged): why it
    /// was judged failing. `errors` and `calls` then count the messages it failed on and
    /// all it was given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<String>,
}

/// Result of `rollback_plugin` without a version while a trial runs.
#[derive(Debug, Clone, Serialize)]
pub struct TrialDropped {
    pub name: String,
    /// The version that was on trial.
    pub dropped: u64,
    pub trial: TrialMode,
    /// The active version, which stays.
    pub version: Option<u64>,
}

/// Result of `plugin_shadow`.
#[derive(Debug, Clone, Serialize)]
pub struct TrialStatus {
    pub name: String,
    pub active_version: Option<u64>,
    pub trial: Option<PluginTrialRecord>,
    /// Absent when no version is on trial.
    #[serde(flatten)]
    pub report: Option<TrialFigures>,
}

/// What a version on trial has done since it started (or since the broker did).
#[derive(Debug, Clone, Serialize)]
pub struct TrialFigures {
    #[serde(flatten)]
    pub counts: TrialCounts,
    /// Why the trial is judged failing, if it is.
    pub failing: Option<String>,
    /// The newest messages the two versions routed differently, oldest first.
    pub examples: Vec<RouteDifference>,
}

/// One message the version on trial routed differently from the active one.
#[derive(Debug, Clone, Serialize)]
pub struct RouteDifference {
    /// ms since the Unix epoch.
    pub at: u64,
    pub exchange: String,
    pub routing_key: String,
    pub headers: Headers,
    pub active: RoutedTo,
    pub shadow: RoutedTo,
}

/// Where a version routed a message: its bindings, or why it failed.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum RoutedTo {
    Bindings { bindings: Vec<BindingTarget> },
    Failed { error: String },
}

/// A binding id with its queue and key (`queue` null once the binding is gone).
#[derive(Debug, Clone, Serialize)]
pub struct BindingTarget {
    pub binding: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    pub queue: Option<String>,
}

/// Result of `list_plugins`.
#[derive(Debug, Clone, Serialize)]
pub struct PluginList {
    pub plugins: Vec<PluginRow>,
}

/// One plugin type of `list_plugins`.
#[derive(Debug, Clone, Serialize)]
pub struct PluginRow {
    pub name: String,
    /// `exchange` or `handler`.
    pub kind: &'static str,
    pub bundled: bool,
    pub active_version: Option<u64>,
    pub hash: Option<String>,
    pub calls: u64,
    pub errors: u64,
    pub p99_call_us: Option<f64>,
    pub stats: StatsSnapshot,
    pub versions: Vec<VersionCounts>,
    /// Exchange plugins only.
    #[serde(flatten)]
    pub exchange: Option<ExchangePluginRow>,
}

/// What `list_plugins` shows of an exchange plugin only.
#[derive(Debug, Clone, Serialize)]
pub struct ExchangePluginRow {
    /// Its compiled code came from the artifact cache.
    pub from_cache: bool,
    pub last_auto_rollback: Option<AutoRollback>,
    pub trial: Option<PluginTrialRecord>,
    pub quarantined: Vec<QuarantinedExchange>,
}

#[derive(Debug, Clone, Serialize)]
pub struct QuarantinedExchange {
    pub exchange: String,
    /// ms since the Unix epoch.
    pub since: u64,
    pub reason: String,
}

/// Messages, calls and errors of one version since the broker started.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct VersionCounts {
    pub version: u64,
    pub messages: u64,
    pub calls: u64,
    pub errors: u64,
}

/// Result of `plugin_history`.
#[derive(Debug, Clone, Serialize)]
pub struct PluginHistory {
    pub name: String,
    pub versions: Vec<HistoryEntry>,
}

#[derive(Debug, Clone, Serialize)]
pub struct HistoryEntry {
    #[serde(flatten)]
    pub version: PluginVersion,
    pub active: bool,
    /// How it runs, while it is on trial.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trial: Option<TrialMode>,
}

/// Result of `plugin_logs`.
#[derive(Debug, Clone, Serialize)]
pub struct PluginLogs {
    pub name: String,
    pub lines: Vec<LogLine>,
    /// Where a follower continues: the newest line it has seen.
    pub last_seq: u64,
}

/// Result of `prune_plugin`.
#[derive(Debug, Clone, Serialize)]
pub struct PluginPruned {
    pub name: String,
    pub pruned: Vec<u64>,
    pub kept: Vec<u64>,
}

/// Result of `delete_plugin`: the versions deleted with it.
#[derive(Debug, Clone, Serialize)]
pub struct PluginDeleted {
    pub name: String,
    pub deleted: Vec<u64>,
}

/// Result of `reset_plugin`: the exchanges whose quarantine was lifted.
#[derive(Debug, Clone, Serialize)]
pub struct PluginReset {
    pub name: String,
    pub reset: Vec<String>,
}

/// Result of `route`: where a message would go.
#[derive(Debug, Clone, Serialize)]
pub struct RouteTrace {
    pub exchange: String,
    /// The exchange type, or `default`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The version of its plugin that decided.
    pub plugin_version: Option<u64>,
    pub bindings: Vec<TracedBinding>,
    pub queues: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TracedBinding {
    pub queue: String,
    pub key: String,
    pub arguments: Headers,
}

/// Result of `list_handlers`.
#[derive(Debug, Clone, Serialize)]
pub struct HandlerList {
    pub handlers: Vec<HandlerRow>,
}

/// One handler attachment of `list_handlers`.
#[derive(Debug, Clone, Serialize)]
pub struct HandlerRow {
    pub queue: String,
    pub plugin: String,
    pub mode: HandlerMode,
    pub concurrency: u32,
    pub config: BTreeMap<String, String>,
    /// The deployed version its instances run: the active one, unless that refused the
    /// attachment (then `refused` says which and why); null for bundled plugins and
    /// files from --plugins-dir.
    pub plugin_version: Option<u64>,
    pub refused: Option<HandlerRefusal>,
    pub subscribers: usize,
    pub stats: HandlerCounts,
}

#[derive(Debug, Clone, Serialize)]
pub struct HandlerRefusal {
    pub version: u64,
    pub reason: String,
}

/// What an attachment's handler did with its deliveries since the broker started.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct HandlerCounts {
    pub handled: u64,
    pub acked: u64,
    pub retried: u64,
    pub rejected: u64,
    pub failed: u64,
    pub dropped: u64,
    pub transformed: u64,
    pub published: u64,
}
