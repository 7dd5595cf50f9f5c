//! Virtual hosts and permissions through the client (administrators only).

use super::{Client, ClientError};
use crate::protocol::{Op, PermissionList, SetPermissions, VhostList};

impl Client {
    pub async fn add_vhost(&self, vhost: &str) -> Result<(), ClientError> {
        self.call_unit(Op::AddVhost {
            vhost: vhost.to_owned(),
        })
        .await
    }

    /// Deletes `vhost` with everything in it and closes its connections.
    pub async fn delete_vhost(&self, vhost: &str) -> Result<(), ClientError> {
        self.call_unit(Op::DeleteVhost {
            vhost: vhost.to_owned(),
        })
        .await
    }

    pub async fn list_vhosts(&self) -> Result<Vec<String>, ClientError> {
        let list = self.call::<VhostList>(Op::ListVhosts).await?;
        Ok(list.vhosts.into_iter().map(|v| v.vhost).collect())
    }

    pub async fn set_permissions(&self, permissions: SetPermissions) -> Result<(), ClientError> {
        self.call_unit(Op::SetPermissions(permissions)).await
    }

    pub async fn clear_permissions(&self, user: &str, vhost: &str) -> Result<(), ClientError> {
        self.call_unit(Op::ClearPermissions {
            user: user.to_owned(),
            vhost: vhost.to_owned(),
        })
        .await
    }

    pub async fn list_permissions(&self) -> Result<Vec<SetPermissions>, ClientError> {
        Ok(self
            .call::<PermissionList>(Op::ListPermissions)
            .await?
            .permissions)
    }
}
