//! Users as stored: a name, an Argon2id password hash (PHC string), RabbitMQ's tags, and
//! per-user limits.

use std::collections::BTreeMap;
use std::fmt;

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use rand_core::OsRng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256, Sha512};

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

/// Whether `password` matches the stored hash (false for a malformed hash): Argon2id,
/// or a hash imported from RabbitMQ ([`rabbitmq_hash`]).
pub fn verify_password(password: &str, stored: &str) -> bool {
    if let Some((algorithm, encoded)) = stored
        .strip_prefix(RABBITMQ_PREFIX)
        .and_then(|rest| rest.split_once('$'))
    {
        return verify_rabbitmq(password, algorithm, encoded);
    }
    PasswordHash::new(stored).is_ok_and(|hash| {
        Argon2::default()
            .verify_password(password.as_bytes(), &hash)
            .is_ok()
    })
}

/// How a hash imported from RabbitMQ is stored: `$rabbitmq-ALGORITHM$BASE64`.
const RABBITMQ_PREFIX: &str = "$rabbitmq-";

/// The stored form of a password hash RabbitMQ exported: its `hashing_algorithm` is
/// `rabbit_password_hashing_sha256` (RabbitMQ's default) or `..._sha512`, and its
/// `password_hash` the base64 of a 4-byte salt followed by the digest of the salt and
/// the password. (RabbitMQ's legacy MD5 is refused.)
pub fn rabbitmq_hash(imported: &crate::protocol::ImportedHash) -> Result<String, String> {
    let algorithm = match imported.hashing_algorithm.as_str() {
        "rabbit_password_hashing_sha256" => "sha256",
        "rabbit_password_hashing_sha512" => "sha512",
        other => {
            return Err(format!(
                "`hashing_algorithm` `{other}` is not supported: rabbit_password_hashing_sha256 or rabbit_password_hashing_sha512"
            ));
        }
    };
    let digest_len = match algorithm {
        "sha256" => 32,
        _ => 64,
    };
    let decoded = BASE64
        .decode(imported.password_hash.as_bytes())
        .map_err(|e| format!("`password_hash` is not base64: {e}"))?;
    if decoded.len() != 4 + digest_len {
        return Err(format!(
            "`password_hash` must hold a 4-byte salt and a {digest_len}-byte digest"
        ));
    }
    Ok(format!(
        "{RABBITMQ_PREFIX}{algorithm}${}",
        imported.password_hash
    ))
}

fn verify_rabbitmq(password: &str, algorithm: &str, encoded: &str) -> bool {
    let Ok(decoded) = BASE64.decode(encoded.as_bytes()) else {
        return false;
    };
    let Some((salt, expected)) = decoded.split_at_checked(4) else {
        return false;
    };
    let salted = [salt, password.as_bytes()].concat();
    let actual: Vec<u8> = match algorithm {
        "sha256" => Sha256::digest(&salted).to_vec(),
        "sha512" => Sha512::digest(&salted).to_vec(),
        _ => return false,
    };
    // Every byte compared, whatever the first difference.
    actual.len() == expected.len()
        && actual
            .iter()
            .zip(expected)
            .fold(0, |diff, (a, b)| diff | (a ^ b))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rabbitmq_hashes_verify_as_rabbitmq_made_them() {
        // RabbitMQ's rabbit_password_hashing_sha256: base64(salt ++ sha256(salt ++ password)).
        let salt = [0x90, 0x8d, 0xc6, 0x0a];
        let digest = Sha256::digest([&salt[..], b"s3cret"].concat());
        let exported = BASE64.encode([&salt[..], &digest[..]].concat());
        let imported = crate::protocol::ImportedHash {
            password_hash: exported,
            hashing_algorithm: "rabbit_password_hashing_sha256".into(),
        };
        let stored = rabbitmq_hash(&imported).unwrap();
        assert!(verify_password("s3cret", &stored));
        assert!(!verify_password("s3cret!", &stored));
        assert!(!verify_password("", &stored));
        let md5 = crate::protocol::ImportedHash {
            hashing_algorithm: "rabbit_password_hashing_md5".into(),
            ..imported.clone()
        };
        assert!(rabbitmq_hash(&md5).is_err());
        let short = crate::protocol::ImportedHash {
            password_hash: BASE64.encode([1, 2, 3]),
            ..imported
        };
        assert!(rabbitmq_hash(&short).is_err());
    }

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
