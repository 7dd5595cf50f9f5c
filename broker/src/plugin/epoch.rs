//! The wall-clock backstop: a thread that advances the engine's epoch, so a call that
//! runs past its deadline is interrupted even if fuel accounting did not stop it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use wasmtime::Engine;

/// The deadline is split into this many ticks; a call is interrupted after one more tick
/// than that, i.e. between 1x and 1.25x the configured deadline.
pub const TICKS_PER_DEADLINE: u64 = 4;

/// The epoch deadline of a call, in ticks from now.
pub const CALL_DEADLINE_TICKS: u64 = TICKS_PER_DEADLINE + 1;

/// Advances the epoch every `deadline / TICKS_PER_DEADLINE` until dropped.
pub struct EpochTicker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EpochTicker {
    pub fn start(engine: Engine, deadline: Duration) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let interval = (deadline / TICKS_PER_DEADLINE as u32).max(Duration::from_millis(1));
        let stopped = stop.clone();
        let thread = std::thread::Builder::new()
            .name("plugin-epoch".into())
            .spawn(move || {
                while !stopped.load(Ordering::Acquire) {
                    std::thread::park_timeout(interval);
                    engine.increment_epoch();
                }
            })?;
        Ok(EpochTicker {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}
