//! Audit lines for the requests that change what code the broker runs: plugin deploys,
//! rollbacks, resets and prunes, and handler attachments. Logged when a front end admits
//! the request — the one place that knows the user, the source address and the vhost for
//! every protocol and the HTTP API — before the router carries it out (its own log says
//! how it went, e.g. "plugin version active").

use std::net::IpAddr;

use super::Principal;
use crate::protocol::Op;

/// One `audit` line for `op` if it is such a request.
pub(super) fn admitted(principal: &Principal, vhost: &str, peer: IpAddr, op: &Op) {
    let (event, plugin, queue) = match op {
        Op::DeployPlugin { name, .. } => ("plugin_deploy", name, None),
        Op::RollbackPlugin { name, .. } => ("plugin_rollback", name, None),
        Op::PromotePlugin { name } => ("plugin_promote", name, None),
        Op::ResetPlugin { name } => ("plugin_reset", name, None),
        Op::PrunePlugin { name, .. } => ("plugin_prune", name, None),
        Op::DeletePlugin { name } => ("plugin_delete", name, None),
        Op::AttachHandler(attach) => ("handler_attach", &attach.plugin, Some(&attach.queue)),
        Op::DetachHandler { queue, plugin } => ("handler_detach", plugin, Some(queue)),
        _ => return,
    };
    let queue = queue.map_or("", String::as_str);
    tracing::info!(target: "audit", event, user = %principal.user, %peer, vhost, plugin = %plugin, queue, "plugin change requested");
}
