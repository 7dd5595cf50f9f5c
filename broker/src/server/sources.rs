//! Connections per source address: one host cannot take every connection slot.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Open connections by peer IP address, bounded per address.
pub(crate) struct Sources {
    limit: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

impl Sources {
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Sources {
            limit,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// Counts a new connection from `ip`, or `None` when `ip` is at its limit. The
    /// connection is counted until the returned guard is dropped.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<SourceGuard> {
        let mut open = self
            .open
            .lock()
            .expect("not poisoned: no panics while held");
        let count = open.entry(ip).or_insert(0);
        if *count >= self.limit {
            return None;
        }
        *count += 1;
        Some(SourceGuard {
            sources: self.clone(),
            ip,
        })
    }
}

/// One admitted connection; releases its slot when dropped.
pub(crate) struct SourceGuard {
    sources: Arc<Sources>,
    ip: IpAddr,
}

impl Drop for SourceGuard {
    fn drop(&mut self) {
        let mut open = self.sources.open.lock().expect("not poisoned");
        if let Some(count) = open.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_up_to_the_limit_per_address_and_frees_on_drop() {
        let sources = Sources::new(2);
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let first = sources.admit(a).unwrap();
        let _second = sources.admit(a).unwrap();
        assert!(sources.admit(a).is_none());
        let _other = sources.admit(b).unwrap();
        drop(first);
        assert!(sources.admit(a).is_some());
    }
}
