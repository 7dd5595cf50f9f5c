//! Virtual hosts and permissions: stored through the router's batch like users, and
//! learned by the authenticator once committed. Deleting a vhost removes everything in
//! it and closes its connections.

use std::sync::Arc;

use super::{Answer, OpError, Outbound, Reply, Router};
use crate::auth::{Authenticator, UserRecord};
use crate::protocol::{
    ErrorCode, PermissionList, ServerFrame, SetPermissions, VhostInfo, VhostList,
};
use crate::queue::ConnId;
use crate::store::StoreOp;
use crate::vhost::{self, DEFAULT_VHOST};

impl Router {
    pub(super) fn add_vhost(&mut self, conn: ConnId, name: String) -> Result<Reply, OpError> {
        self.require_administrator(conn, "add_vhost")?;
        vhost::check_vhost_name(&name).map_err(|e| OpError::new(ErrorCode::InvalidField, e))?;
        if self.auth.vhost_exists(&name) {
            return Ok(Reply::Ok(Answer::Done));
        }
        tracing::info!(target: "audit", event = "vhost_added", vhost = %name, by = %self.conn_user(conn), "vhost added");
        self.turn.store(StoreOp::PutVhost(name.clone()));
        self.predeclare(&name);
        let auth = self.auth.clone();
        self.turn.on_commit(Box::new(move |result| {
            if result.is_ok() {
                auth.put_vhost(&name);
            }
        }));
        Ok(Reply::OkAfterCommit(Answer::Done))
    }

    /// Removes every queue, exchange and binding of the vhost, closes its connections and
    /// takes every user's permissions there away.
    pub(super) fn delete_vhost(&mut self, conn: ConnId, name: String) -> Result<Reply, OpError> {
        self.require_administrator(conn, "delete_vhost")?;
        if name == DEFAULT_VHOST {
            return Err(OpError::new(
                ErrorCode::PreconditionFailed,
                "the default vhost `/` cannot be deleted",
            ));
        }
        self.require_vhost(&name)?;
        tracing::info!(target: "audit", event = "vhost_deleted", vhost = %name, by = %self.conn_user(conn), "vhost deleted");
        let in_vhost = |resource: &str| vhost::of(resource) == name;
        self.close_vhost_here(&name, true);
        self.drop_reserved(&name);
        let exchanges: Vec<String> = self
            .topology
            .exchanges
            .keys()
            .filter(|e| in_vhost(e))
            .cloned()
            .collect();
        for exchange in exchanges {
            let _ = self.delete_exchange(&exchange, false);
        }
        let unrestored: Vec<String> = self
            .topology
            .unrestored
            .keys()
            .filter(|e| in_vhost(e))
            .cloned()
            .collect();
        for exchange in unrestored {
            if let Some(waiting) = self.topology.unrestored.remove(&exchange) {
                for (id, _) in waiting.bindings {
                    self.turn.store(StoreOp::DeleteBinding(id));
                }
                self.drop_waiting_exchange_bindings(&exchange);
                self.turn.store(StoreOp::DeleteExchange(exchange));
            }
        }
        for mut user in self.auth.list() {
            if user.permissions.remove(&name).is_some() {
                self.store_user(user);
            }
        }
        self.turn.store(StoreOp::DeleteVhost(name.clone()));
        let auth = self.auth.clone();
        self.turn.on_commit(Box::new(move |result| {
            if result.is_ok() {
                auth.remove_vhost(&name);
            }
        }));
        Ok(Reply::OkAfterCommit(Answer::Done))
    }

    pub(super) fn list_vhosts(&self, conn: ConnId) -> Result<Reply, OpError> {
        self.require_administrator(conn, "list_vhosts")?;
        let vhosts = self
            .auth
            .vhosts()
            .into_iter()
            .map(|vhost| VhostInfo { vhost })
            .collect();
        Ok(Reply::Ok(Answer::from(VhostList { vhosts })))
    }

    pub(super) fn set_permissions(
        &mut self,
        conn: ConnId,
        set: SetPermissions,
    ) -> Result<Reply, OpError> {
        self.require_administrator(conn, "set_permissions")?;
        self.require_vhost(&set.vhost)?;
        let mut user = self.require_user(&set.user)?;
        let permissions = crate::auth::Permissions {
            configure: set.configure,
            write: set.write,
            read: set.read,
            plugin: set.plugin,
        };
        permissions
            .compile()
            .map_err(|e| OpError::new(ErrorCode::InvalidField, e))?;
        tracing::info!(target: "audit", event = "permissions_set", user = %set.user, vhost = %set.vhost,
            configure = %permissions.configure, write = %permissions.write, read = %permissions.read,
            plugin = permissions.plugin, by = %self.conn_user(conn), "permissions set");
        user.permissions.insert(set.vhost, permissions);
        self.store_user(user);
        Ok(Reply::OkAfterCommit(Answer::Done))
    }

    pub(super) fn clear_permissions(
        &mut self,
        conn: ConnId,
        user: String,
        vhost: String,
    ) -> Result<Reply, OpError> {
        self.require_administrator(conn, "clear_permissions")?;
        let mut record = self.require_user(&user)?;
        if record.permissions.remove(&vhost).is_none() {
            return Ok(Reply::Ok(Answer::Done));
        }
        tracing::info!(target: "audit", event = "permissions_cleared", user = %user, vhost = %vhost, by = %self.conn_user(conn), "permissions cleared");
        self.store_user(record);
        Ok(Reply::OkAfterCommit(Answer::Done))
    }

    pub(super) fn list_permissions(&self, conn: ConnId) -> Result<Reply, OpError> {
        self.require_administrator(conn, "list_permissions")?;
        let permissions = self
            .auth
            .list()
            .into_iter()
            .flat_map(|user| {
                user.permissions
                    .into_iter()
                    .map(move |(vhost, p)| SetPermissions {
                        user: user.name.clone(),
                        vhost,
                        configure: p.configure,
                        write: p.write,
                        read: p.read,
                        plugin: p.plugin,
                    })
            })
            .collect();
        Ok(Reply::Ok(Answer::from(PermissionList { permissions })))
    }

    /// A queue shard's part of `delete_vhost` (home deletes the vhost itself): the
    /// vhost's connections and queues here go. Checked as home checks it, but not for the
    /// vhost's existence, which home may already have removed.
    pub(super) fn delete_vhost_queues(
        &mut self,
        conn: ConnId,
        name: String,
    ) -> Result<Reply, OpError> {
        self.require_administrator(conn, "delete_vhost")?;
        if name == DEFAULT_VHOST {
            return Ok(Reply::Ok(Answer::Done));
        }
        self.close_vhost_here(&name, false);
        Ok(Reply::OkAfterCommit(Answer::Done))
    }

    /// Vhost `name`'s connections and this shard's queues of it go; with `tell`
    /// (home: it alone writes to them), the connections are told why first.
    fn close_vhost_here(&mut self, name: &str, tell: bool) {
        let closing: Vec<ConnId> = (self.conns.iter())
            .filter(|(_, c)| *c.vhost == *name && c.peer.is_some())
            .map(|(id, _)| *id)
            .collect();
        for id in closing {
            if tell && let Some(c) = self.conns.get(&id) {
                let reason = format!("vhost `{name}` was deleted");
                let refused = ErrorCode::AccessRefused;
                let _ = (c.tx).send(Outbound::Frame(ServerFrame::error(
                    None,
                    refused,
                    reason.clone(),
                )));
                let _ = c.tx.send(Outbound::Close(reason));
            }
            self.close_conn(id, false);
        }
        let queues: Vec<Arc<str>> = (self.queues.keys())
            .filter(|q| vhost::of(q) == name)
            .cloned()
            .collect();
        for queue in queues {
            self.remove_queue(&queue, "vhost deleted");
        }
    }

    fn require_vhost(&self, name: &str) -> Result<(), OpError> {
        match self.auth.vhost_exists(name) {
            true => Ok(()),
            false => Err(OpError::new(
                ErrorCode::VhostNotFound,
                format!("no vhost `{name}`"),
            )),
        }
    }

    fn require_user(&self, name: &str) -> Result<UserRecord, OpError> {
        self.auth
            .get(name)
            .ok_or_else(|| OpError::new(ErrorCode::UserNotFound, format!("no user `{name}`")))
    }

    /// Stores a changed user; the authenticator learns it once committed.
    fn store_user(&mut self, record: UserRecord) {
        let auth: Arc<Authenticator> = self.auth.clone();
        self.turn.store(StoreOp::PutUser(record.clone()));
        self.turn.on_commit(Box::new(move |result| {
            if result.is_ok() {
                auth.put(record);
            }
        }));
    }
}
