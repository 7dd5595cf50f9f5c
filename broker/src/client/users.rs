//! User management through the client (administrators; any user for its own password).

use super::{Client, ClientError};
use crate::auth::{Tag, UserLimits};
use crate::protocol::{Op, UserInfo, UserList};

impl Client {
    /// Creates or replaces `user` with `password` and `tags`.
    pub async fn add_user(
        &self,
        user: &str,
        password: &str,
        tags: &[Tag],
    ) -> Result<(), ClientError> {
        self.call_unit(Op::AddUser {
            user: user.to_owned(),
            password: Some(password.to_owned()),
            imported: None,
            tags: tags.to_vec(),
        })
        .await
    }

    /// Creates or replaces `user` with a password hash RabbitMQ exported (its
    /// definitions' `password_hash` and `hashing_algorithm`): it logs in with the
    /// password it had there.
    pub async fn import_user(
        &self,
        user: &str,
        imported: crate::protocol::ImportedHash,
        tags: &[Tag],
    ) -> Result<(), ClientError> {
        self.call_unit(Op::AddUser {
            user: user.to_owned(),
            password: None,
            imported: Some(Box::new(imported)),
            tags: tags.to_vec(),
        })
        .await
    }

    pub async fn delete_user(&self, user: &str) -> Result<(), ClientError> {
        self.call_unit(Op::DeleteUser {
            user: user.to_owned(),
        })
        .await
    }

    pub async fn change_password(&self, user: &str, password: &str) -> Result<(), ClientError> {
        self.call_unit(Op::ChangePassword {
            user: user.to_owned(),
            password: password.to_owned(),
        })
        .await
    }

    /// Sets `user`'s limits, replacing the ones it had (a `None` limit: no limit).
    pub async fn set_user_limits(
        &self,
        user: &str,
        limits: &UserLimits,
    ) -> Result<(), ClientError> {
        self.call_unit(Op::SetUserLimits {
            user: user.to_owned(),
            max_connections: limits.max_connections,
            max_queues: limits.max_queues,
        })
        .await
    }

    pub async fn list_users(&self) -> Result<Vec<UserInfo>, ClientError> {
        Ok(self.call::<UserList>(Op::ListUsers).await?.users)
    }
}
