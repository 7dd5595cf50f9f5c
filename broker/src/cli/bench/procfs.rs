//! What the bench reads about the broker's process from /proc: per-thread CPU time
//! (`/proc/PID/task/*/stat`), resident memory (`/proc/PID/status`), and which local
//! process listens on the --server port (`/proc/net/tcp{,6}` and `/proc/*/fd`).

use std::collections::HashMap;
use std::time::Instant;

/// CPU time (user + system, clock ticks) and name of every thread of a process.
#[derive(Clone)]
pub(super) struct ThreadTimes {
    pid: u32,
    at: Instant,
    /// The whole process's, exited threads included.
    process: u64,
    threads: HashMap<u32, (String, u64)>,
}

impl ThreadTimes {
    /// Reads every thread's `stat`; `None` when the process is gone or unreadable.
    pub(super) fn sample(pid: u32) -> Option<ThreadTimes> {
        let at = Instant::now();
        let (_, process) = parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)?;
        let mut threads = HashMap::new();
        for entry in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
            let Ok(entry) = entry else { continue };
            let Some(tid) = entry.file_name().to_str().and_then(|t| t.parse().ok()) else {
                continue;
            };
            // A thread can end between the listing and the read: skip it.
            if let Some(times) = std::fs::read_to_string(entry.path().join("stat"))
                .ok()
                .and_then(|stat| parse_stat(&stat))
            {
                threads.insert(tid, times);
            }
        }
        Some(ThreadTimes {
            pid,
            at,
            process,
            threads,
        })
    }

    /// CPU used since `self`, as of a new sample: `broker_cpu_cores` (CPU seconds per
    /// wall second, from the process's own counters, so threads that ended count too),
    /// the busiest thread's share of it and that thread's name (a thread started in
    /// between counts from zero).
    pub(super) fn usage_since(&self) -> Option<CpuUsage> {
        let now = ThreadTimes::sample(self.pid)?;
        let secs = now.at.duration_since(self.at).as_secs_f64();
        let total = now.process.saturating_sub(self.process);
        let mut busiest = (0u64, String::new());
        for (tid, (comm, ticks)) in &now.threads {
            let before = self.threads.get(tid).map_or(0, |(_, t)| *t);
            let used = ticks.saturating_sub(before);
            if used > busiest.0 {
                busiest = (used, comm.clone());
            }
        }
        let tick = clock_tick();
        Some(CpuUsage {
            cores: total as f64 * tick / secs.max(1e-9),
            max_share: match total {
                0 => 0.0,
                _ => (busiest.0 as f64 / total as f64).min(1.0),
            },
            max_thread: match busiest.1.is_empty() {
                true => "-".into(),
                false => busiest.1.replace(' ', "_"),
            },
        })
    }
}

pub(super) struct CpuUsage {
    pub(super) cores: f64,
    pub(super) max_share: f64,
    pub(super) max_thread: String,
}

/// `(comm, utime + stime)` from a `/proc/.../stat` line. The name is in parentheses and
/// may itself hold spaces or parentheses, so fields are counted after the last `)`.
fn parse_stat(stat: &str) -> Option<(String, u64)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?.to_owned();
    // After `)`: state (field 3), ..., utime (field 14), stime (field 15).
    let fields: Vec<&str> = stat.get(close + 1..)?.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((comm, utime + stime))
}

/// Seconds per clock tick (`sysconf(_SC_CLK_TCK)`, 100 Hz almost everywhere).
fn clock_tick() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    1.0 / if hz > 0 { hz as f64 } else { 100.0 }
}

/// Resident memory (`VmRSS`) of `pid` in bytes.
pub(super) fn resident_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The local process listening on `url`'s port (`ws://host:PORT...`): the socket's inode
/// from /proc/net/tcp and tcp6 (state 0A = LISTEN), then the process holding a file
/// descriptor `socket:[INODE]`. `None` for a remote or unreadable broker.
pub(super) fn listener_pid(url: &str) -> Option<u32> {
    let port = port_of(url)?;
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state), Some(inode)) =
                (fields.get(1), fields.get(3), fields.get(9))
            else {
                continue;
            };
            let local_port = local
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            if *state == "0A" && local_port == Some(port) {
                inodes.push(format!("socket:[{inode}]"));
            }
        }
    }
    if inodes.is_empty() {
        return None;
    }
    let own = std::process::id();
    for proc_entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = proc_entry.file_name().to_str().and_then(|p| p.parse().ok()) else {
            continue;
        };
        if pid == own {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(proc_entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(target) = std::fs::read_link(fd.path())
                && inodes.iter().any(|i| target.as_os_str() == i.as_str())
            {
                return Some(pid);
            }
        }
    }
    None
}

/// The port of `ws://host:PORT/...` (80 or 443 when absent).
fn port_of(url: &str) -> Option<u16> {
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split('/').next()?;
    match authority.rsplit_once(':') {
        Some((_, port)) if !port.ends_with(']') => port.parse().ok(),
        _ => Some(match scheme {
            "wss" => 443,
            "amqp" => 5672,
            "amqps" => 5671,
            _ => 80,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_with_odd_names_parse() {
        let stat = "42 (tokio-runtime-w) S 1 2 3 4 5 6 7 8 9 10 120 30 0 0 20 0";
        assert_eq!(parse_stat(stat), Some(("tokio-runtime-w".into(), 150)));
        let odd = "7 (a (b) c) R 1 2 3 4 5 6 7 8 9 10 1 2 0 0";
        assert_eq!(parse_stat(odd), Some(("a (b) c".into(), 3)));
    }

    #[test]
    fn ports_come_from_the_url() {
        assert_eq!(port_of("ws://127.0.0.1:5672"), Some(5672));
        assert_eq!(port_of("ws://localhost:8080/path"), Some(8080));
        assert_eq!(port_of("ws://[::1]:9000/"), Some(9000));
        assert_eq!(port_of("ws://example.com"), Some(80));
    }

    #[test]
    fn the_own_process_has_threads_and_memory() {
        let pid = std::process::id();
        let before = ThreadTimes::sample(pid).expect("own /proc");
        assert!(!before.threads.is_empty());
        assert!(before.usage_since().is_some());
        assert!(resident_bytes(pid).unwrap() > 0);
    }
}
