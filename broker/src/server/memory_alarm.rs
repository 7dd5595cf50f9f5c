//! The memory alarm, as RabbitMQ's: past the high watermark of resident memory, every
//! connection that publishes stops being read (and is told `blocked`) until memory falls
//! back below it, so a flood of publishes cannot grow the broker without bound.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::watch;

/// How often resident memory is read (from /proc: a few microseconds).
const SAMPLE_EVERY: Duration = Duration::from_millis(50);

/// The alarm clears below this share of the watermark, so it does not flap.
const CLEAR_BELOW: f64 = 0.9;

/// How the high watermark is given.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MemoryWatermark {
    /// A share of the machine's memory (RabbitMQ's default is 0.4).
    Fraction(f64),
    Bytes(u64),
}

impl MemoryWatermark {
    pub const DEFAULT: MemoryWatermark = MemoryWatermark::Fraction(0.4);

    /// Parses `0.4` (a share of total memory), `512MiB`, `2GiB`, `1000000` (bytes).
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let units = [
            ("KiB", 1u64 << 10),
            ("MiB", 1 << 20),
            ("GiB", 1 << 30),
            ("B", 1),
        ];
        for (suffix, unit) in units {
            if let Some(number) = text.strip_suffix(suffix) {
                let n: u64 = number
                    .trim()
                    .parse()
                    .map_err(|_| format!("`{text}`: expected a whole number before {suffix}"))?;
                return Ok(MemoryWatermark::Bytes(n.saturating_mul(unit)));
            }
        }
        if let Ok(bytes) = text.parse::<u64>()
            && bytes > 1
        {
            return Ok(MemoryWatermark::Bytes(bytes));
        }
        match text.parse::<f64>() {
            Ok(share) if share > 0.0 && share <= 1.0 => Ok(MemoryWatermark::Fraction(share)),
            _ => Err(format!(
                "`{text}`: expected a share of memory in (0, 1] or a size such as 512MiB"
            )),
        }
    }

    /// The watermark in bytes on this machine.
    pub fn bytes(self) -> u64 {
        match self {
            MemoryWatermark::Bytes(bytes) => bytes,
            MemoryWatermark::Fraction(share) => {
                (total_memory().unwrap_or(u64::MAX / 2) as f64 * share) as u64
            }
        }
    }
}

/// Resident memory and the alarm, for metrics and the management page.
#[derive(Debug, Default)]
pub struct MemoryStats {
    pub resident_bytes: AtomicU64,
    pub watermark_bytes: AtomicU64,
    /// 1 while the alarm is raised.
    pub alarm: AtomicU64,
}

/// Samples resident memory until `shutdown`, raising and clearing the alarm on `alarm`.
pub(super) async fn watch_memory(
    watermark: u64,
    alarm: watch::Sender<bool>,
    stats: Arc<MemoryStats>,
    mut shutdown: watch::Receiver<bool>,
) {
    stats.watermark_bytes.store(watermark, Ordering::Relaxed);
    let mut ticks = tokio::time::interval(SAMPLE_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = shutdown.changed() => return,
        }
        let Some(resident) = resident_memory() else {
            return; // not on Linux: no alarm
        };
        stats.resident_bytes.store(resident, Ordering::Relaxed);
        let raised = *alarm.borrow();
        let now_raised = if raised {
            resident as f64 >= watermark as f64 * CLEAR_BELOW
        } else {
            resident >= watermark
        };
        if now_raised != raised {
            if now_raised {
                tracing::warn!(resident, watermark, "memory alarm: publishers blocked");
            } else {
                tracing::info!(
                    resident,
                    watermark,
                    "memory alarm cleared: publishers unblocked"
                );
            }
            stats.alarm.store(now_raised as u64, Ordering::Relaxed);
            alarm.send_replace(now_raised);
        }
    }
}

/// This process's resident set size in bytes (Linux).
/// The broker stopped while a connection waited for the alarm to clear.
pub struct StoppedWhileBlocked;

/// Waits until the memory alarm clears; every protocol's publishing connection waits
/// here, unread, while it is raised.
pub async fn wait_until_alarm_clears(
    alarm: &mut watch::Receiver<bool>,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<(), StoppedWhileBlocked> {
    while *alarm.borrow_and_update() {
        tokio::select! {
            changed = alarm.changed() => if changed.is_err() { break },
            _ = shutdown.changed() => return Err(StoppedWhileBlocked),
        }
    }
    Ok(())
}

pub fn resident_memory() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok()?)
}

/// The machine's memory in bytes (Linux).
fn total_memory() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_shares_and_sizes() {
        use MemoryWatermark::*;
        assert_eq!(MemoryWatermark::parse("0.4"), Ok(Fraction(0.4)));
        assert_eq!(MemoryWatermark::parse("1"), Ok(Fraction(1.0)));
        assert_eq!(MemoryWatermark::parse("512MiB"), Ok(Bytes(512 << 20)));
        assert_eq!(MemoryWatermark::parse("2 GiB"), Ok(Bytes(2 << 30)));
        assert_eq!(MemoryWatermark::parse("1000000"), Ok(Bytes(1_000_000)));
        for bad in ["0", "-1", "1.5", "lots", "MiB", "1.5GiB", ""] {
            assert!(MemoryWatermark::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn reads_this_process_memory() {
        let resident = resident_memory().unwrap();
        assert!(resident > 0);
        assert!(MemoryWatermark::Fraction(0.5).bytes() > resident);
    }
}
