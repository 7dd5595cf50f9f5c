//! The management page's logins: one random token per login (the `broker_session`
//! cookie), kept in memory with its expiry until it expires or its user logs out. A
//! restart logs everyone out. Only a SHA-256 of each token is kept, so the table itself
//! holds nothing a client could present.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use rand_core::{OsRng, RngCore};
use sha2::{Digest, Sha256};

/// Sessions kept at most; past this, logging in drops the one closest to expiring (a
/// flood of logins cannot grow memory without bound).
const MAX_SESSIONS: usize = 10_000;

struct Session {
    login: Login,
    expires: Instant,
}

/// Who a session is for: the user, and its password (hash) when it logged in — a
/// session ends when the password changes.
#[derive(Debug, Clone, PartialEq)]
pub struct Login {
    pub user: Arc<str>,
    pub password_hash: Arc<str>,
}

pub struct Sessions {
    lifetime: Duration,
    by_token: Mutex<HashMap<[u8; 32], Session>>,
}

impl Sessions {
    /// Sessions that end `lifetime` after their login.
    pub fn new(lifetime: Duration) -> Sessions {
        Sessions {
            lifetime,
            by_token: Mutex::new(HashMap::new()),
        }
    }

    /// A new session for `login`: its token (32 random bytes, base64url), for the cookie.
    pub fn open(&self, login: Login) -> String {
        let mut token = [0u8; 32];
        OsRng.fill_bytes(&mut token);
        let now = Instant::now();
        let mut sessions = self.lock();
        if sessions.len() >= MAX_SESSIONS {
            sessions.retain(|_, s| s.expires > now);
        }
        if sessions.len() >= MAX_SESSIONS {
            let soonest = sessions
                .iter()
                .min_by_key(|(_, s)| s.expires)
                .map(|(key, _)| *key);
            if let Some(key) = soonest {
                sessions.remove(&key);
            }
        }
        sessions.insert(
            digest(&token),
            Session {
                login,
                expires: now + self.lifetime,
            },
        );
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token)
    }

    /// The login of the session `token` names; `None` when it is unknown or expired (an
    /// expired one is forgotten).
    pub fn login(&self, token: &str) -> Option<Login> {
        let key = key_of(token)?;
        let mut sessions = self.lock();
        let session = sessions.get(&key)?;
        if session.expires <= Instant::now() {
            sessions.remove(&key);
            return None;
        }
        Some(session.login.clone())
    }

    /// Ends the session `token` names (logout).
    pub fn close(&self, token: &str) {
        if let Some(key) = key_of(token) {
            self.lock().remove(&key);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Session>> {
        self.by_token.lock().expect("sessions lock not poisoned")
    }
}

/// The table's key for a token as the cookie carries it; `None` when it is not one.
fn key_of(token: &str) -> Option<[u8; 32]> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .ok()?;
    let token: [u8; 32] = bytes.try_into().ok()?;
    Some(digest(&token))
}

fn digest(token: &[u8; 32]) -> [u8; 32] {
    Sha256::digest(token).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann() -> Login {
        Login {
            user: "ann".into(),
            password_hash: "$argon2id$x".into(),
        }
    }

    #[test]
    fn tokens_name_their_login_until_closed_or_expired() {
        let sessions = Sessions::new(Duration::from_secs(60));
        let a = sessions.open(ann());
        let b = sessions.open(ann());
        assert_ne!(a, b);
        assert_eq!(a.len(), 43);
        assert_eq!(sessions.login(&a), Some(ann()));
        sessions.close(&a);
        assert_eq!(sessions.login(&a), None);
        assert_eq!(sessions.login(&b), Some(ann()));
        assert_eq!(sessions.login("not a token"), None);
        let expired = Sessions::new(Duration::ZERO);
        let c = expired.open(ann());
        assert_eq!(expired.login(&c), None);
    }
}
