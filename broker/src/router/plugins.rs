//! Plugin versions: deploy, rollback, list, history.
//!
//! Every deploy ends in the same path: the bytes are compiled and validated off the
//! router's task (the host activates them only if that succeeds, so a bad upload leaves
//! the old version running), then the router numbers the version and stores it with its
//! bytes and the active pointer; the reply follows the commit. At startup the stored
//! active versions are loaded before exchanges are recovered.

use serde_json::json;
use sha2::{Digest, Sha256};

use super::exchanges::now_ms;
use super::{Command, OpError, Outbound, Reply, Router};
use crate::plugin::PluginInfo;
use crate::protocol::{ErrorCode, RequestId, ServerFrame};
use crate::queue::ConnId;
use crate::store::{PluginVersion, StoreOp};

/// A plugin version the host has compiled and activated, for the router to record.
#[derive(Debug)]
pub struct Activated {
    pub conn: ConnId,
    pub id: RequestId,
    pub info: PluginInfo,
    /// A new version to number and store (deploy), or an earlier one (rollback).
    pub version: PluginVersion,
    pub is_new: bool,
}

impl Router {
    pub(super) fn deploy_plugin(
        &mut self,
        conn: ConnId,
        id: RequestId,
        name: String,
        wasm_base64: &str,
        deployed_by: Option<String>,
    ) -> Result<Reply, OpError> {
        use base64::Engine as _;
        let wasm = base64::engine::general_purpose::STANDARD
            .decode(wasm_base64.as_bytes())
            .map_err(|e| OpError::new(ErrorCode::InvalidField, format!("`wasm_base64`: {e}")))?;
        let version = PluginVersion {
            hash: hex(&Sha256::digest(&wasm)),
            name,
            version: 0, // numbered once it is valid
            deployed_at: now_ms(),
            deployed_by: deployed_by.unwrap_or_else(|| format!("connection {conn}")),
            size_bytes: wasm.len() as u64,
            wasm: wasm.into(),
        };
        self.activate(conn, id, version, true);
        Ok(Reply::Silent)
    }

    pub(super) fn rollback_plugin(
        &mut self,
        conn: ConnId,
        id: RequestId,
        name: &str,
        to: Option<u64>,
    ) -> Result<Reply, OpError> {
        let Some(versions) = self.plugin_versions.get(name) else {
            let message = format!("no deployed plugin `{name}` (bundled types have no versions)");
            return Err(OpError::new(ErrorCode::PluginNotFound, message));
        };
        let active = self.active_plugins.get(name).copied();
        let target = match to {
            Some(v) => versions.iter().find(|p| p.version == v),
            None => versions.iter().rev().find(|p| Some(p.version) < active),
        };
        let Some(target) = target.cloned() else {
            let message = match to {
                Some(v) => format!("plugin `{name}` has no version {v}"),
                None => format!("plugin `{name}` has no version before the active one"),
            };
            return Err(OpError::new(ErrorCode::PluginNotFound, message));
        };
        self.activate(conn, id, target, false);
        Ok(Reply::Silent)
    }

    /// Compiles and activates `version` off the router's task, then reports back as
    /// [`Command::PluginActivated`]; a refusal is answered from there directly.
    fn activate(&mut self, conn: ConnId, id: RequestId, version: PluginVersion, is_new: bool) {
        let Some(tx) = self.conns.get(&conn).map(|c| c.tx.clone()) else {
            return;
        };
        let (plugins, router) = (self.plugins.clone(), self.self_tx.clone());
        tokio::spawn(async move {
            match plugins.load(&version.name, version.wasm.clone()).await {
                Ok(info) => {
                    let activated = Activated {
                        conn,
                        id,
                        info,
                        version,
                        is_new,
                    };
                    let _ = router.send(Command::PluginActivated(Box::new(activated)));
                }
                Err(e) => {
                    tracing::warn!(plugin = %version.name, error = %e, "plugin deploy refused; the active version stays");
                    let frame =
                        ServerFrame::error(Some(id), ErrorCode::InvalidPlugin, e.to_string());
                    let _ = tx.send(Outbound::Frame(frame));
                }
            }
        });
    }

    /// Records an activated version: numbered and stored when new; the reply follows the
    /// commit.
    pub(super) fn plugin_activated(&mut self, activated: Activated) {
        let Activated {
            conn,
            id,
            info,
            mut version,
            is_new,
        } = activated;
        let versions = self
            .plugin_versions
            .entry(version.name.clone())
            .or_default();
        if is_new {
            version.version = versions.last().map_or(1, |v| v.version + 1);
            versions.push(version.clone());
            self.batch
                .ops
                .push(StoreOp::PutPluginVersion(version.clone()));
        }
        self.active_plugins
            .insert(version.name.clone(), version.version);
        self.batch.ops.push(StoreOp::SetActivePlugin {
            name: version.name.clone(),
            version: version.version,
        });
        tracing::info!(
            plugin = %version.name, version = version.version, hash = %version.hash,
            deployed_by = %version.deployed_by, rollback = !is_new, "plugin version active"
        );
        let result = json!({
            "name": version.name,
            "version": version.version,
            "hash": version.hash,
            "abi_version": info.abi_version,
            "capabilities": info.capabilities,
            "size_bytes": version.size_bytes,
        });
        self.answer(conn, id, Ok(Reply::OkAfterCommit(result)));
    }

    pub(super) fn list_plugins(&self) -> Reply {
        let plugins: Vec<_> = self
            .plugins
            .plugins()
            .into_iter()
            .map(|info| {
                let active = self.active_plugins.get(&info.name).copied();
                let hash = active.and_then(|v| {
                    let versions = self.plugin_versions.get(&info.name)?;
                    versions
                        .iter()
                        .find(|p| p.version == v)
                        .map(|p| p.hash.clone())
                });
                json!({
                    "name": info.name,
                    "kind": "exchange",
                    "bundled": info.bundled,
                    "active_version": active,
                    "hash": hash,
                    "stats": self.plugins.stats(&info.name),
                })
            })
            .collect();
        let mut plugins = plugins;
        for (name, bundled, stats) in self.plugins.handler_plugins() {
            let active = self.active_plugins.get(&name).copied();
            let hash = active.and_then(|v| {
                let versions = self.plugin_versions.get(&name)?;
                versions
                    .iter()
                    .find(|p| p.version == v)
                    .map(|p| p.hash.clone())
            });
            plugins.push(json!({
                "name": name,
                "kind": "handler",
                "bundled": bundled,
                "active_version": active,
                "hash": hash,
                "stats": stats.unwrap_or_default(),
            }));
        }
        Reply::Ok(json!({ "plugins": plugins }))
    }

    pub(super) fn plugin_history(&self, name: &str) -> Result<Reply, OpError> {
        let versions = self.plugin_versions.get(name).ok_or_else(|| {
            OpError::new(
                ErrorCode::PluginNotFound,
                format!("no deployed plugin `{name}`"),
            )
        })?;
        let active = self.active_plugins.get(name).copied();
        let versions: Vec<_> = versions
            .iter()
            .map(|v| {
                let mut entry = serde_json::to_value(v).expect("serializable");
                entry["active"] = json!(Some(v.version) == active);
                entry
            })
            .collect();
        Ok(Reply::Ok(json!({ "name": name, "versions": versions })))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
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
