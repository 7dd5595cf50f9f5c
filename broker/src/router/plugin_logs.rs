//! `plugin_logs`: a plugin's recent log lines, kept by the plugin host.

use super::{OpError, Reply, Router};
use crate::protocol::{ErrorCode, PluginLogs};

impl Router {
    pub(super) fn plugin_logs(
        &self,
        name: &str,
        after: u64,
        limit: usize,
    ) -> Result<Reply, OpError> {
        let lines = self.plugins.logs(name, after, limit).ok_or_else(|| {
            OpError::new(
                ErrorCode::PluginNotFound,
                format!("no plugin `{name}` has been loaded since the broker started"),
            )
        })?;
        // Where a follower continues: the newest line it has seen.
        let last_seq = lines.last().map_or(after, |line| line.seq);
        let logs = PluginLogs {
            name: name.to_owned(),
            lines,
            last_seq,
        };
        Ok(Reply::Ok(logs.into()))
    }
}
