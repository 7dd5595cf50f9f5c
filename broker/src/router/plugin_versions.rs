//! The router's record of plugin versions: every deployed version, the active one, the
//! version on trial, the deploys under way and the versions waiting for their commit,
//! compiled code by artifact key, and the last automatic rollback of each plugin.
//!
//! Only the router's turn reads and writes it (deploys in `plugins.rs`, trials in
//! `trials.rs`, pruning in `plugin_prune.rs`, listings in `plugin_list.rs`); the running
//! instances themselves are the plugin host's.

use std::collections::{BTreeMap, HashMap, VecDeque};

use crate::store::PluginVersion;

use super::plugins::DeployJob;
use super::trials::Trials;
use crate::protocol::AutoRollback;

#[derive(Default)]
pub(super) struct PluginVersions {
    /// Every deployed version of each plugin, in version order.
    pub deployed: BTreeMap<String, Vec<PluginVersion>>,
    /// Plugin name → active version.
    pub active: HashMap<String, u64>,
    /// Plugin name → its deploys and rollbacks not done yet; the first one is compiling.
    pub deploys: HashMap<String, VecDeque<DeployJob>>,
    /// Plugin name → versions compiled and waiting for the commit that makes them active
    /// (only then are they listed and running).
    pub committing: HashMap<String, Vec<u64>>,
    /// Compiled plugin code by artifact key (see `PluginHost::artifact_key`).
    pub artifacts: HashMap<String, bytes::Bytes>,
    /// The last automatic rollback of each plugin.
    pub auto_rollbacks: HashMap<String, AutoRollback>,
    /// Plugin name → its version on trial (shadow or canary), as stored.
    pub trials: Trials,
    /// Stored versions kept per plugin after each deploy; `None`: all.
    pub keep: Option<u64>,
}
