//! The recent log lines of each plugin (every version, every exchange or attachment),
//! kept in memory so `plugin_logs` (`broker plugin logs NAME`) can show them without
//! access to the broker's own log. Each line also goes to the broker's log (tracing).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

/// Lines kept per plugin; older ones are dropped (1 KiB each at most by default).
pub const LOG_RING_LINES: usize = 1000;

/// One line a plugin logged.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LogLine {
    /// Numbers lines of one plugin from 1, in order, across versions.
    pub seq: u64,
    /// When it was logged, ms since the Unix epoch.
    pub at: u64,
    /// `trace`, `debug`, `info`, `warn` or `error`.
    pub level: &'static str,
    /// The exchange (or, for a handler, the queue) whose instance logged it.
    pub scope: String,
    pub text: String,
}

/// The last [`LOG_RING_LINES`] lines of one plugin.
#[derive(Debug, Default)]
pub struct LogRing {
    lines: Mutex<Ring>,
}

#[derive(Debug, Default)]
struct Ring {
    lines: VecDeque<LogLine>,
    last_seq: u64,
}

impl LogRing {
    pub fn push(&self, level: &'static str, scope: &str, text: &str) {
        let at = crate::clock::now_ms();
        let mut ring = self.lines.lock().expect("log ring lock poisoned");
        ring.last_seq += 1;
        let seq = ring.last_seq;
        if ring.lines.len() == LOG_RING_LINES {
            ring.lines.pop_front();
        }
        ring.lines.push_back(LogLine {
            seq,
            at,
            level,
            scope: scope.to_owned(),
            text: text.to_owned(),
        });
    }

    /// The kept lines numbered above `after`, oldest first, at most `limit` of the newest.
    pub fn since(&self, after: u64, limit: usize) -> Vec<LogLine> {
        let ring = self.lines.lock().expect("log ring lock poisoned");
        let newer = ring.lines.iter().filter(|line| line.seq > after);
        let skip = newer.clone().count().saturating_sub(limit);
        newer.skip(skip).cloned().collect()
    }
}

/// Every plugin's [`LogRing`], by name; owned by the plugin host.
#[derive(Debug, Default)]
pub struct PluginLogs {
    rings: Mutex<HashMap<String, Arc<LogRing>>>,
}

impl PluginLogs {
    /// Plugin `name`'s ring, created on first use.
    pub fn ring(&self, name: &str) -> Arc<LogRing> {
        let mut rings = self.rings.lock().expect("plugin logs lock poisoned");
        rings.entry(name.to_owned()).or_default().clone()
    }

    /// Plugin `name`'s ring if it ever had one.
    pub fn get(&self, name: &str) -> Option<Arc<LogRing>> {
        let rings = self.rings.lock().expect("plugin logs lock poisoned");
        rings.get(name).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_lines_in_order() {
        let ring = LogRing::default();
        for i in 0..LOG_RING_LINES + 5 {
            ring.push("info", "ex", &format!("line {i}"));
        }
        let all = ring.since(0, usize::MAX);
        assert_eq!(all.len(), LOG_RING_LINES);
        assert_eq!(all[0].seq, 6);
        assert_eq!(
            all.last().unwrap().text,
            format!("line {}", LOG_RING_LINES + 4)
        );
        let tail = ring.since(0, 2);
        assert_eq!(tail.iter().map(|l| l.seq).collect::<Vec<_>>(), [1004, 1005]);
        assert!(ring.since(1005, 10).is_empty());
        assert_eq!(ring.since(1003, 10).len(), 2);
    }
}
