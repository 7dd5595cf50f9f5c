//! User management: the router stores user changes in its batch like any other durable
//! change, and the authenticator learns them once they are committed. Passwords arrive
//! already hashed (the connection hashes them off the router's task).

use std::sync::Arc;

use super::{Answer, OpError, Reply, Router};
use crate::auth::{Authenticator, Principal, UserLimits, UserRecord};
use crate::protocol::{ErrorCode, RequestId, UserInfo, UserList};
use crate::queue::ConnId;
use crate::store::StoreOp;

/// A change to the users, as a connection hands it to the router.
#[derive(Debug)]
pub enum UserChange {
    Put(UserRecord),
    Delete(String),
}

impl Router {
    /// Refuses unless connection `conn` is an administrator (the broker's own sessions
    /// are trusted: the HTTP API checks its callers itself).
    pub(super) fn require_administrator(&self, conn: ConnId, what: &str) -> Result<(), OpError> {
        match self.conns.get(&conn).map(|c| c.user.as_ref()) {
            Some(None) => Ok(()),
            Some(Some(principal)) if principal.is_administrator() => Ok(()),
            _ => Err(OpError::new(
                ErrorCode::AccessRefused,
                format!("{what} needs the administrator tag"),
            )),
        }
    }

    pub(super) fn list_users(&self, conn: ConnId) -> Result<Reply, OpError> {
        self.require_administrator(conn, "list_users")?;
        let users = self
            .auth
            .list()
            .into_iter()
            .map(|u| UserInfo {
                user: u.name,
                tags: u.tags,
                loopback_only: u.loopback_only,
                max_connections: u.limits.max_connections,
                max_queues: u.limits.max_queues,
            })
            .collect();
        Ok(Reply::Ok(UserList { users }.into()))
    }

    /// Stores a user change; the reply and the authenticator's update follow the commit.
    pub(super) fn change_user(&mut self, conn: ConnId, id: RequestId, change: UserChange) {
        let result = self.store_user_change(conn, change);
        self.answer(conn, id, result, None);
    }

    pub(super) fn store_user_change(
        &mut self,
        conn: ConnId,
        change: UserChange,
    ) -> Result<Reply, OpError> {
        let own_password = matches!(&change, UserChange::Put(record)
            if self.conns.get(&conn).and_then(|c| c.user.as_ref()).is_some_and(|p| *p.user == *record.name)
                && self.auth.get(&record.name).is_some());
        if !own_password {
            self.require_administrator(conn, "changing users")?;
        }
        let who = self.conn_user(conn);
        let auth: Arc<Authenticator> = self.auth.clone();
        match change {
            UserChange::Put(record) => {
                tracing::info!(target: "audit", event = "user_changed", user = %record.name, by = %who, "user stored");
                self.turn.store(StoreOp::PutUser(record.clone()));
                self.turn.on_commit(Box::new(move |result| {
                    if result.is_ok() {
                        auth.put(record);
                    }
                }));
            }
            UserChange::Delete(name) => {
                if self.auth.get(&name).is_none() {
                    return Err(OpError::new(
                        ErrorCode::UserNotFound,
                        format!("no user `{name}`"),
                    ));
                }
                tracing::info!(target: "audit", event = "user_deleted", user = %name, by = %who, "user deleted");
                self.turn.store(StoreOp::DeleteUser(name.clone()));
                self.turn.on_commit(Box::new(move |result| {
                    if result.is_ok() {
                        auth.remove(&name);
                    }
                }));
            }
        }
        Ok(Reply::OkAfterCommit(Answer::Done))
    }

    pub(super) fn set_user_limits(
        &mut self,
        conn: ConnId,
        user: String,
        limits: UserLimits,
    ) -> Result<Reply, OpError> {
        self.require_administrator(conn, "set_user_limits")?;
        let Some(mut record) = self.auth.get(&user) else {
            return Err(OpError::new(
                ErrorCode::UserNotFound,
                format!("no user `{user}`"),
            ));
        };
        record.limits = limits;
        self.store_user_change(conn, UserChange::Put(record))
    }

    /// Refuses a new connection of a user who has as many open as its limit allows.
    pub(super) fn check_connection_limit(&self, principal: &Principal) -> Result<(), String> {
        let Some(limit) = self
            .auth
            .get(&principal.user)
            .and_then(|u| u.limits.max_connections)
        else {
            return Ok(());
        };
        let open = self
            .conns
            .values()
            .filter(|c| c.peer.is_some() && c.session.is_none())
            .filter(|c| c.user.as_ref().is_some_and(|u| u.user == principal.user))
            .count();
        if open < limit as usize {
            return Ok(());
        }
        tracing::warn!(target: "audit", event = "connection_limit", user = %principal.user, limit, "connection refused: user at its connection limit");
        Err(format!(
            "user `{}` has reached its limit of {limit} connections",
            principal.user
        ))
    }

    /// The user whose connection `conn` is, if any (`None`: the broker's own sessions,
    /// such as the HTTP API's).
    pub(super) fn conn_principal(&self, conn: ConnId) -> Option<Arc<str>> {
        let principal = self.conns.get(&conn)?.user.as_ref()?;
        Some(principal.user.clone())
    }

    /// Refuses a new queue of `user` when it has declared as many as its limit allows.
    /// As RabbitMQ does, a queue counts for the user whose connection declared it (over
    /// every vhost) until it is deleted; the count is the queues that exist now.
    pub(super) fn check_queue_limit(&self, user: &str) -> Result<(), OpError> {
        let Some(limit) = self.auth.get(user).and_then(|u| u.limits.max_queues) else {
            return Ok(());
        };
        let declared = match self.queues.placement().shards() {
            1 => (self.queues.values())
                .filter(|q| q.declared_by.as_deref() == Some(user))
                .count(),
            _ => self.queues.placement().declared_by(user),
        };
        if declared < limit as usize {
            return Ok(());
        }
        tracing::warn!(target: "audit", event = "queue_limit", user, limit, "queue refused: user at its queue limit");
        Err(OpError::new(
            ErrorCode::AccessRefused,
            format!("user `{user}` has reached its limit of {limit} queues"),
        ))
    }

    /// Who is behind `conn`, for audit lines.
    pub(super) fn conn_user(&self, conn: ConnId) -> String {
        match self.conns.get(&conn).map(|c| c.user.as_ref()) {
            Some(Some(principal)) => principal.user.to_string(),
            Some(None) => "(broker)".to_string(),
            None => "(closed)".to_string(),
        }
    }
}
