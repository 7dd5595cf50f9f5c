//! Users as stored: a name, an Argon2id password hash (PHC string), RabbitMQ's tags, and
//! per-user limits.

use std::collections::BTreeMap;
use std::fmt;

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use rand_core::OsRng;
use serde::{Deserialize, Serialize};

use super::permissions::Permissions;
use crate::vhost::DEFAULT_VHOST;

/// What a user may do beyond its permissions, as RabbitMQ's user tags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tag {
    /// Everything, including managing users.
    Administrator,
    /// The management HTTP API and page.
    Management,
    /// Read-only monitoring: metrics and listings.
    Monitoring,
    None,
}

impl Tag {
    pub fn parse(text: &str) -> Result<Tag, String> {
        match text {
            "administrator" => Ok(Tag::Administrator),
            "management" => Ok(Tag::Management),
            "monitoring" => Ok(Tag::Monitoring),
            "none" => Ok(Tag::None),
            other => Err(format!(
                "unknown tag `{other}`: expected administrator, management, monitoring or none"
            )),
        }
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Tag::Administrator => "administrator",
            Tag::Management => "management",
            Tag::Monitoring => "monitoring",
            Tag::None => "none",
        })
    }
}

/// Per-user limits; `None` is unlimited.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UserLimits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_queues: Option<u32>,
}

/// A user as stored in the `users` table (JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserRecord {
    pub name: String,
    /// Argon2id, PHC string format.
    pub password_hash: String,
    pub tags: Vec<Tag>,
    #[serde(default)]
    pub limits: UserLimits,
    /// May only connect from a loopback address (the default `guest`, as in RabbitMQ).
    #[serde(default)]
    pub loopback_only: bool,
    /// Vhost → what the user may do there; none: the user cannot use that vhost.
    /// Records stored before permissions existed get everything on `/` (what they had).
    #[serde(default = "permissions_before_vhosts")]
    pub permissions: BTreeMap<String, Permissions>,
}

fn permissions_before_vhosts() -> BTreeMap<String, Permissions> {
    BTreeMap::from([(DEFAULT_VHOST.to_string(), Permissions::full())])
}

impl UserRecord {
    /// A new user with `password` hashed (tens of milliseconds: call off async tasks).
    pub fn new(name: &str, password: &str, tags: Vec<Tag>) -> UserRecord {
        UserRecord {
            name: name.to_string(),
            password_hash: hash_password(password),
            tags,
            limits: UserLimits::default(),
            loopback_only: false,
            permissions: BTreeMap::new(),
        }
    }

    pub fn has_tag(&self, tag: Tag) -> bool {
        self.tags.contains(&tag)
    }
}

/// A user name: 1 to 255 bytes, no control characters, no `:` (HTTP Basic splits there).
pub fn check_user_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 255 || name.chars().any(|c| c.is_control() || c == ':') {
        return Err("a user name must be 1 to 255 bytes, without control characters or `:`".into());
    }
    Ok(())
}

/// Argon2id with the crate's default parameters (19 MiB, 2 passes) and a random salt.
pub fn hash_password(password: &str) -> String {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .expect("hashing with default parameters cannot fail")
        .to_string()
}

/// Whether `password` matches the stored hash (false for a malformed hash).
pub fn verify_password(password: &str, stored: &str) -> bool {
    PasswordHash::new(stored).is_ok_and(|hash| {
        Argon2::default()
            .verify_password(password.as_bytes(), &hash)
            .is_ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_and_differ_by_salt() {
        let a = hash_password("s3cret");
        let b = hash_password("s3cret");
        assert!(a.starts_with("$argon2id$"));
        assert_ne!(a, b);
        assert!(verify_password("s3cret", &a));
        assert!(!verify_password("S3cret", &a));
        assert!(!verify_password("s3cret", "not a hash"));
    }

    #[test]
    fn records_from_before_permissions_get_everything_on_the_default_vhost() {
        let old = r#"{"name":"alice","password_hash":"x","tags":["management"]}"#;
        let record: UserRecord = serde_json::from_str(old).unwrap();
        assert_eq!(record.permissions["/"], Permissions::full());
        assert_eq!(record.permissions.len(), 1);
        let new = UserRecord::new("bob", "pw", vec![]);
        let stored = serde_json::to_string(&new).unwrap();
        let back: UserRecord = serde_json::from_str(&stored).unwrap();
        assert!(back.permissions.is_empty());
    }

    #[test]
    fn tags_parse_and_print() {
        for tag in ["administrator", "management", "monitoring", "none"] {
            assert_eq!(Tag::parse(tag).unwrap().to_string(), tag);
        }
        assert!(Tag::parse("root").is_err());
    }
}
