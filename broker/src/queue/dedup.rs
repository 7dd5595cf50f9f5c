//! A queue's dedup window: the message ids it has taken recently, so that a publish
//! repeating one (a producer retrying after a lost confirm) is confirmed without being
//! enqueued twice, as NATS JetStream's `Msg-Id` duplicate window does.

use std::collections::{HashMap, VecDeque};

/// The ids seen within the window and until when each counts (ms since the Unix epoch).
#[derive(Debug, Default)]
pub struct DedupWindow {
    until: HashMap<String, u64>,
    /// (until, id) in the order they were recorded; `until` only grows with it, since the
    /// window is fixed and time moves on.
    order: VecDeque<(u64, String)>,
}

impl DedupWindow {
    /// Whether `id` was taken within the window (at `now`).
    pub fn is_duplicate(&self, id: &str, now: u64) -> bool {
        self.until.get(id).is_some_and(|until| *until > now)
    }

    /// Records `id` as taken until `until`.
    pub fn record(&mut self, id: &str, until: u64) {
        self.until.insert(id.to_owned(), until);
        self.order.push_back((until, id.to_owned()));
    }

    /// Forgets the ids whose window has passed and returns them (to delete them from the
    /// store). An id recorded again later stays.
    pub fn expire(&mut self, now: u64) -> Vec<String> {
        let mut expired = Vec::new();
        while let Some((until, _)) = self.order.front()
            && *until <= now
        {
            let (until, id) = self.order.pop_front().expect("peeked");
            if self.until.get(&id) == Some(&until) {
                self.until.remove(&id);
                expired.push(id);
            }
        }
        expired
    }

    pub fn len(&self) -> usize {
        self.until.len()
    }

    pub fn is_empty(&self) -> bool {
        self.until.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_count_within_their_window_only() {
        let mut window = DedupWindow::default();
        window.record("a", 100);
        assert!(window.is_duplicate("a", 99));
        assert!(!window.is_duplicate("a", 100));
        assert!(!window.is_duplicate("b", 0));
        window.record("b", 150);
        assert_eq!(window.expire(120), vec!["a".to_owned()]);
        assert_eq!(window.len(), 1);
    }

    #[test]
    fn an_id_recorded_again_outlives_its_first_entry() {
        let mut window = DedupWindow::default();
        window.record("a", 100);
        window.record("a", 200);
        assert!(window.expire(150).is_empty());
        assert!(window.is_duplicate("a", 150));
        assert_eq!(window.expire(200), vec!["a".to_owned()]);
        assert!(window.is_empty());
    }
}
