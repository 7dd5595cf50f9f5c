//! Who is connecting: one authenticator for every listener (WebSocket, HTTP, and the
//! protocols added later). It owns the users in memory; the store keeps them (table
//! `users`), written through the router's batches like everything else.

mod audit;
mod permissions;
mod users;

pub use permissions::{
    Access, DEFAULT_EXCHANGE_RESOURCE, GENERATED_QUEUE_RESOURCE, Grant, Permissions,
};
pub use users::{Tag, UserLimits, UserRecord, check_user_name, hash_password, rabbitmq_hash};

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use rand_core::{OsRng, RngCore};
use sha2::{Digest, Sha256};

/// The user a fresh install creates, as RabbitMQ does: `guest` / `guest`, an
/// administrator that may connect from loopback addresses only.
pub const DEFAULT_USER: &str = "guest";
pub const DEFAULT_PASSWORD: &str = "guest";

/// Failed logins from one address slow down its next attempts: 50 ms, doubling per
/// failure, at most this long.
const MAX_PENALTY: Duration = Duration::from_secs(5);
const FIRST_PENALTY: Duration = Duration::from_millis(50);
/// An address's failures are forgotten after this long without another.
const FORGET_FAILURES_AFTER: Duration = Duration::from_secs(300);

/// An authenticated user, as a connection carries it.
#[derive(Debug, Clone, PartialEq)]
pub struct Principal {
    pub user: Arc<str>,
    pub tags: Vec<Tag>,
}

impl Principal {
    pub fn has_tag(&self, tag: Tag) -> bool {
        self.tags.contains(&tag)
    }

    pub fn is_administrator(&self) -> bool {
        self.has_tag(Tag::Administrator)
    }
}

/// Why a login was refused. The wire says only "invalid username or password" for the
/// first two, so a client cannot tell which users exist.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AuthError {
    #[error("invalid username or password")]
    InvalidCredentials,
    #[error("user `{0}` may only connect from a loopback address")]
    LoopbackOnly(String),
    #[error("access to vhost `{vhost}` refused for user `{user}`")]
    VhostRefused { user: String, vhost: String },
    /// A client certificate the CA vouches for, naming a user that does not exist.
    #[error("the client certificate names no user of this broker")]
    UnknownCertificateUser,
    /// A client certificate for one user, and credentials for another.
    #[error(
        "the client certificate is for user `{certificate}`, the credentials for `{credentials}`"
    )]
    CertificateMismatch {
        certificate: String,
        credentials: String,
    },
}

/// Login counters, for metrics.
#[derive(Debug, Default)]
pub struct AuthStats {
    pub successes: AtomicU64,
    pub failures: AtomicU64,
}

/// A connection's copy of its user's grant in its vhost (`None` inside: no permissions),
/// with the [`Authenticator`]'s change count it was read at. Per connection, so checking
/// a publish takes no lock or reference count that other threads' connections share.
#[derive(Default)]
pub struct GrantCache(Mutex<Option<CachedGrant>>);

struct CachedGrant {
    changes: u64,
    user: Arc<str>,
    vhost: String,
    grant: Option<Arc<Grant>>,
}

struct Failures {
    count: u32,
    last: Instant,
}

pub struct Authenticator {
    users: RwLock<HashMap<String, UserRecord>>,
    /// user → vhost → the user's permissions there, compiled (nested, so that the check
    /// every publish makes looks up borrowed names without allocating).
    grants: RwLock<HashMap<String, HashMap<String, Arc<Grant>>>>,
    vhosts: RwLock<BTreeSet<String>>,
    /// Counts changes to users, grants and vhosts: a connection's [`GrantCache`] is good
    /// while it has not moved.
    changes: AtomicU64,
    /// User → SHA-256 of (per-process pepper, password) that last verified: a client
    /// reconnecting with the same password skips Argon2 (tens of milliseconds).
    verified: Mutex<HashMap<String, [u8; 32]>>,
    pepper: [u8; 16],
    failures: Mutex<HashMap<IpAddr, Failures>>,
    pub stats: AuthStats,
}

impl Authenticator {
    pub fn new(
        users: impl IntoIterator<Item = UserRecord>,
        vhosts: impl IntoIterator<Item = String>,
    ) -> Arc<Self> {
        let mut pepper = [0u8; 16];
        OsRng.fill_bytes(&mut pepper);
        let users: HashMap<String, UserRecord> =
            users.into_iter().map(|u| (u.name.clone(), u)).collect();
        let grants = users
            .values()
            .map(|user| (user.name.clone(), compile_grants(user)))
            .collect();
        Arc::new(Authenticator {
            users: RwLock::new(users),
            grants: RwLock::new(grants),
            vhosts: RwLock::new(vhosts.into_iter().collect()),
            changes: AtomicU64::new(0),
            verified: Mutex::new(HashMap::new()),
            pepper,
            failures: Mutex::new(HashMap::new()),
            stats: AuthStats::default(),
        })
    }

    /// Checks `user`'s `password` for a client at `peer`. After failures from the same
    /// address, waits first (exponentially longer per failure).
    pub async fn authenticate(
        &self,
        user: &str,
        password: &str,
        peer: IpAddr,
    ) -> Result<Principal, AuthError> {
        let penalty = self.penalty(peer);
        if !penalty.is_zero() {
            tokio::time::sleep(penalty).await;
        }
        let result = self.check(user, password, peer).await;
        self.record(&result, user, peer, "password");
        result
    }

    /// Logs in the user named by a client certificate's subject CN, which the TLS layer
    /// verified against `--tls-ca`: the user must exist (no password is asked); counted,
    /// slowed down after failures and audited like a password login.
    pub async fn authenticate_certificate(
        &self,
        user: &str,
        peer: IpAddr,
    ) -> Result<Principal, AuthError> {
        let penalty = self.penalty(peer);
        if !penalty.is_zero() {
            tokio::time::sleep(penalty).await;
        }
        let record = self.read_users().get(user).cloned();
        let result = match record {
            None => Err(AuthError::UnknownCertificateUser),
            Some(record) if record.loopback_only && !peer.is_loopback() => {
                Err(AuthError::LoopbackOnly(user.to_string()))
            }
            Some(record) => Ok(Principal {
                user: Arc::from(user),
                tags: record.tags,
            }),
        };
        self.record(&result, user, peer, "certificate");
        if result.is_ok() {
            tracing::info!(target: "audit", event = "authenticated", user, %peer, method = "certificate", "authenticated by client certificate");
        }
        result
    }

    /// A login's outcome in the counters, the failures per address and the audit log.
    fn record(
        &self,
        result: &Result<Principal, AuthError>,
        user: &str,
        peer: IpAddr,
        method: &str,
    ) {
        match result {
            Ok(_) => {
                self.stats.successes.fetch_add(1, Ordering::Relaxed);
                self.lock_failures().remove(&peer);
            }
            Err(e) => {
                self.stats.failures.fetch_add(1, Ordering::Relaxed);
                let mut failures = self.lock_failures();
                let entry = failures.entry(peer).or_insert(Failures {
                    count: 0,
                    last: Instant::now(),
                });
                entry.count = entry.count.saturating_add(1);
                entry.last = Instant::now();
                tracing::warn!(target: "audit", event = "authentication_failed", user, %peer, method, reason = %e, "authentication failed");
            }
        }
    }

    async fn check(
        &self,
        user: &str,
        password: &str,
        peer: IpAddr,
    ) -> Result<Principal, AuthError> {
        let record = self.read_users().get(user).cloned();
        let Some(record) = record else {
            return Err(AuthError::InvalidCredentials);
        };
        let fingerprint = self.fingerprint(password);
        let cached = self.lock_verified().get(user) == Some(&fingerprint);
        if !cached {
            let (typed, stored) = (password.to_string(), record.password_hash.clone());
            let matches =
                tokio::task::spawn_blocking(move || users::verify_password(&typed, &stored))
                    .await
                    .unwrap_or(false);
            if !matches {
                return Err(AuthError::InvalidCredentials);
            }
            // Only if the user was not changed meanwhile.
            if self.read_users().get(user).map(|u| &u.password_hash) == Some(&record.password_hash)
            {
                self.lock_verified().insert(user.to_string(), fingerprint);
            }
        }
        if record.loopback_only && !peer.is_loopback() {
            return Err(AuthError::LoopbackOnly(user.to_string()));
        }
        Ok(Principal {
            user: Arc::from(user),
            tags: record.tags.clone(),
        })
    }

    /// Adds or replaces a user (already stored by the caller).
    pub fn put(&self, record: UserRecord) {
        self.lock_verified().remove(&record.name);
        let grants = compile_grants(&record);
        self.write_grants().insert(record.name.clone(), grants);
        self.write_users().insert(record.name.clone(), record);
        self.changed();
    }

    /// Removes a user (already deleted from the store by the caller).
    pub fn remove(&self, user: &str) -> Option<UserRecord> {
        self.lock_verified().remove(user);
        self.write_grants().remove(user);
        let removed = self.write_users().remove(user);
        self.changed();
        removed
    }

    /// After a change to users, grants or vhosts (made before, so that a cache that sees
    /// the new count reads the new state).
    fn changed(&self) {
        self.changes.fetch_add(1, Ordering::AcqRel);
    }

    /// What `user` may do in `vhost`; `None`: nothing (no permissions there, or the vhost
    /// or the user is gone).
    pub fn grant(&self, user: &str, vhost: &str) -> Option<Arc<Grant>> {
        if !self.vhost_exists(vhost) {
            return None;
        }
        let grants = self.grants.read().expect("grants lock not poisoned");
        grants.get(user)?.get(vhost).cloned()
    }

    /// Checks that `principal` may use `vhost` (it exists and the user has permissions
    /// there), as a login does.
    pub fn open_vhost(&self, principal: &Principal, vhost: &str) -> Result<Arc<Grant>, AuthError> {
        let refused = || AuthError::VhostRefused {
            user: principal.user.to_string(),
            vhost: vhost.to_string(),
        };
        let grant = self.grant(&principal.user, vhost).ok_or_else(refused);
        if grant.is_err() {
            tracing::warn!(target: "audit", event = "vhost_refused", user = %principal.user, vhost, "access to vhost refused");
        }
        grant
    }

    /// Authorizes a request of `principal`'s connection to `vhost`, then rewrites its
    /// names to the broker's (see [`crate::vhost`]): what every front end does with a
    /// request before the router sees it. A refusal is audited. `cache` is the
    /// connection's: its grant is looked up again only after a change.
    pub fn admit(
        &self,
        principal: &Principal,
        vhost: &str,
        peer: IpAddr,
        op: &mut crate::protocol::Op,
        cache: &GrantCache,
    ) -> Result<(), (crate::protocol::ErrorCode, String)> {
        use crate::protocol::ErrorCode;
        let refused = {
            let changes = self.changes.load(Ordering::Acquire);
            let mut cached = cache.0.lock().expect("grant cache lock not poisoned");
            let fresh = |c: &CachedGrant| {
                c.changes == changes && c.user == principal.user && c.vhost == vhost
            };
            if !cached.as_ref().is_some_and(fresh) {
                *cached = Some(CachedGrant {
                    changes,
                    user: principal.user.clone(),
                    vhost: vhost.to_string(),
                    grant: self.grant(&principal.user, vhost),
                });
            }
            match cached.as_ref().and_then(|c| c.grant.as_deref()) {
                None => Err(format!(
                    "user `{}` has no permissions in vhost `{vhost}`",
                    principal.user
                )),
                Some(grant) => grant.authorize(op),
            }
        };
        if let Err(reason) = refused {
            tracing::warn!(target: "audit", event = "permission_refused", user = %principal.user, %peer, vhost, %reason, "request refused");
            return Err((ErrorCode::AccessRefused, reason));
        }
        audit::admitted(principal, vhost, peer, op);
        crate::vhost::qualify_op(vhost, op).map_err(|e| (ErrorCode::InvalidField, e))
    }

    pub fn vhost_exists(&self, vhost: &str) -> bool {
        self.vhosts
            .read()
            .expect("vhosts lock not poisoned")
            .contains(vhost)
    }

    /// Every vhost, by name.
    pub fn vhosts(&self) -> Vec<String> {
        let vhosts = self.vhosts.read().expect("vhosts lock not poisoned");
        vhosts.iter().cloned().collect()
    }

    /// Adds a vhost (already stored by the caller).
    pub fn put_vhost(&self, vhost: &str) {
        let mut vhosts = self.vhosts.write().expect("vhosts lock not poisoned");
        vhosts.insert(vhost.to_string());
        drop(vhosts);
        self.changed();
    }

    /// Removes a vhost (already deleted from the store by the caller).
    pub fn remove_vhost(&self, vhost: &str) {
        let mut vhosts = self.vhosts.write().expect("vhosts lock not poisoned");
        vhosts.remove(vhost);
        drop(vhosts);
        self.changed();
    }

    pub fn get(&self, user: &str) -> Option<UserRecord> {
        self.read_users().get(user).cloned()
    }

    /// Every user, by name.
    pub fn list(&self) -> Vec<UserRecord> {
        let mut users: Vec<UserRecord> = self.read_users().values().cloned().collect();
        users.sort_by(|a, b| a.name.cmp(&b.name));
        users
    }

    fn penalty(&self, peer: IpAddr) -> Duration {
        let mut failures = self.lock_failures();
        let Some(entry) = failures.get(&peer) else {
            return Duration::ZERO;
        };
        if entry.last.elapsed() > FORGET_FAILURES_AFTER {
            failures.remove(&peer);
            return Duration::ZERO;
        }
        let doublings = entry.count.saturating_sub(1).min(16);
        (FIRST_PENALTY * 2u32.pow(doublings)).min(MAX_PENALTY)
    }

    fn fingerprint(&self, password: &str) -> [u8; 32] {
        let mut hash = Sha256::new();
        hash.update(self.pepper);
        hash.update(password.as_bytes());
        hash.finalize().into()
    }

    fn read_users(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, UserRecord>> {
        self.users.read().expect("users lock not poisoned")
    }

    fn write_grants(
        &self,
    ) -> std::sync::RwLockWriteGuard<'_, HashMap<String, HashMap<String, Arc<Grant>>>> {
        self.grants.write().expect("grants lock not poisoned")
    }

    fn write_users(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, UserRecord>> {
        self.users.write().expect("users lock not poisoned")
    }

    fn lock_verified(&self) -> std::sync::MutexGuard<'_, HashMap<String, [u8; 32]>> {
        self.verified.lock().expect("cache lock not poisoned")
    }

    fn lock_failures(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Failures>> {
        self.failures.lock().expect("failures lock not poisoned")
    }
}

/// A user's permissions, compiled, by vhost. A stored pattern that no longer compiles
/// allows nothing.
fn compile_grants(record: &UserRecord) -> HashMap<String, Arc<Grant>> {
    record
        .permissions
        .iter()
        .map(|(vhost, permissions)| {
            let grant = permissions.compile().unwrap_or_else(|e| {
                tracing::error!(user = %record.name, vhost, error = %e, "stored permissions do not compile; the user may do nothing there");
                Grant::none()
            });
            (vhost.clone(), Arc::new(grant))
        })
        .collect()
}

/// The user a fresh install starts with: everything on `/`, from loopback only.
pub fn default_user() -> UserRecord {
    let mut guest = UserRecord::new(DEFAULT_USER, DEFAULT_PASSWORD, vec![Tag::Administrator]);
    guest.loopback_only = true;
    guest
        .permissions
        .insert(crate::vhost::DEFAULT_VHOST.to_string(), Permissions::full());
    guest
}

/// `user:password` from an HTTP `Authorization: Basic ...` header value.
pub fn parse_basic(header: &str) -> Option<(String, String)> {
    use base64::Engine as _;
    let encoded = header
        .strip_prefix("Basic ")
        .or_else(|| header.strip_prefix("basic "))?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loopback() -> IpAddr {
        "127.0.0.1".parse().unwrap()
    }

    #[tokio::test]
    async fn checks_passwords_loopback_and_slows_down_failures() {
        let auth = Authenticator::new(
            [default_user(), UserRecord::new("ann", "pw", vec![])],
            ["/".to_string()],
        );
        let guest = auth
            .authenticate("guest", "guest", loopback())
            .await
            .unwrap();
        assert!(guest.is_administrator());
        let remote: IpAddr = "10.1.2.3".parse().unwrap();
        assert_eq!(
            auth.authenticate("guest", "guest", remote).await,
            Err(AuthError::LoopbackOnly("guest".into()))
        );
        assert_eq!(
            auth.authenticate("ann", "wrong", remote).await,
            Err(AuthError::InvalidCredentials)
        );
        assert_eq!(
            auth.authenticate("nobody", "pw", remote).await,
            Err(AuthError::InvalidCredentials)
        );
        // Three failures from there: its next attempt waits 200 ms first.
        assert_eq!(auth.penalty(remote), Duration::from_millis(200));
        assert_eq!(auth.penalty(loopback()), Duration::ZERO);
        assert_eq!(auth.stats.failures.load(Ordering::Relaxed), 3);
        // A replaced password: the cached one no longer works.
        auth.put(UserRecord::new("ann", "new", vec![]));
        assert!(auth.authenticate("ann", "pw", loopback()).await.is_err());
        assert!(auth.authenticate("ann", "new", loopback()).await.is_ok());
        assert!(auth.authenticate("ann", "new", loopback()).await.is_ok());
    }

    #[tokio::test]
    async fn certificate_logins_need_an_existing_user_and_count_failures() {
        let auth = Authenticator::new(
            [default_user(), UserRecord::new("app", "pw", vec![])],
            ["/".to_string()],
        );
        let app = auth
            .authenticate_certificate("app", loopback())
            .await
            .unwrap();
        assert_eq!(&*app.user, "app");
        assert_eq!(
            auth.authenticate_certificate("nobody", loopback()).await,
            Err(AuthError::UnknownCertificateUser)
        );
        // guest stays loopback-only with a certificate too.
        let remote: IpAddr = "10.1.2.3".parse().unwrap();
        assert_eq!(
            auth.authenticate_certificate("guest", remote).await,
            Err(AuthError::LoopbackOnly("guest".into()))
        );
        assert_eq!(auth.stats.successes.load(Ordering::Relaxed), 1);
        assert_eq!(auth.stats.failures.load(Ordering::Relaxed), 2);
        assert_eq!(auth.penalty(loopback()), FIRST_PENALTY);
    }

    #[test]
    fn parses_basic_credentials() {
        // "ann:p:w" — a password may contain colons.
        assert_eq!(
            parse_basic("Basic YW5uOnA6dw=="),
            Some(("ann".into(), "p:w".into()))
        );
        assert_eq!(parse_basic("Bearer abc"), None);
        assert_eq!(parse_basic("Basic !!!"), None);
    }
}
