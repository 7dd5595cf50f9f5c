//! The time half of a call's budget: one process-wide thread advances every plugin
//! engine's epoch while calls run, and each store checks, at every tick of a running call,
//! how much CPU time the call has used (plus what its memory growth is charged).
//!
//! CPU time of the calling thread rather than wall time: a call the OS preempted has not
//! used the machine, and must not fail for it. A wall-clock backstop still stops a call
//! that never gets CPU time counted (it should not exist: plugins get no blocking calls).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::thread::Thread;
use std::time::{Duration, Instant};

use wasmtime::{Engine, UpdateDeadline};

/// How often the epoch advances while calls run: a call overruns its budget by at most
/// about this much.
pub const TICK: Duration = Duration::from_micros(500);
/// Ticks without any call after which the ticker sleeps until the next call starts
/// (an idle broker pays nothing for it).
const IDLE_TICKS: u32 = 200;
/// Growing linear memory costs the host time fuel does not count (mapping, zeroing): each
/// MiB grown in a call is charged this much of its time budget.
const GROWTH_CHARGE_PER_MIB: Duration = Duration::from_micros(100);
/// The wall-clock backstop, as a multiple of the time budget (at least one second).
const WALL_BACKSTOP_FACTOR: u32 = 500;

struct Ticker {
    /// Engines to tick, each with its host's liveness token (dropped hosts are forgotten).
    engines: Mutex<Vec<(Weak<()>, Engine)>>,
    /// A call started or ran through a tick since the ticker last looked.
    busy: AtomicBool,
    /// The ticker is (about to be) parked: the next call must wake it.
    idle: AtomicBool,
    thread: OnceLock<Thread>,
}

static TICKER: OnceLock<Ticker> = OnceLock::new();

/// The ticker, its thread started on first use.
fn ticker() -> std::io::Result<&'static Ticker> {
    static STARTED: Mutex<bool> = Mutex::new(false);
    let ticker = TICKER.get_or_init(|| Ticker {
        engines: Mutex::new(Vec::new()),
        busy: AtomicBool::new(false),
        idle: AtomicBool::new(false),
        thread: OnceLock::new(),
    });
    let mut started = STARTED.lock().expect("ticker start lock poisoned");
    if !*started {
        let handle = std::thread::Builder::new()
            .name("plugin-epoch".into())
            .spawn(move || run(ticker))?;
        let _ = ticker.thread.set(handle.thread().clone());
        *started = true;
    }
    Ok(ticker)
}

fn run(ticker: &'static Ticker) {
    let mut idle_ticks = 0;
    loop {
        if ticker.busy.swap(false, Ordering::SeqCst) {
            idle_ticks = 0;
        } else {
            idle_ticks += 1;
        }
        if idle_ticks >= IDLE_TICKS {
            // Paired with `mark_busy`: either we see its `busy` or it sees our `idle`.
            ticker.idle.store(true, Ordering::SeqCst);
            if !ticker.busy.load(Ordering::SeqCst) {
                std::thread::park_timeout(Duration::from_secs(1));
            }
            ticker.idle.store(false, Ordering::SeqCst);
            // Woken by no call (the timeout, or a spurious wake-up): park again, without
            // ticking on (200 ticks after every timeout kept an idle broker's ticker
            // waking ~250 times a second).
            if !ticker.busy.load(Ordering::SeqCst) {
                continue;
            }
            idle_ticks = 0;
        }
        std::thread::sleep(TICK);
        let mut engines = ticker.engines.lock().expect("ticker lock poisoned");
        engines.retain(|(alive, _)| alive.strong_count() > 0);
        for (_, engine) in engines.iter() {
            engine.increment_epoch();
        }
    }
}

/// Tells the ticker a call is running (cheap when it already knows).
fn mark_busy() {
    let Some(ticker) = TICKER.get() else {
        return;
    };
    if !ticker.busy.load(Ordering::Relaxed) {
        ticker.busy.store(true, Ordering::SeqCst);
        if ticker.idle.load(Ordering::SeqCst)
            && let Some(thread) = ticker.thread.get()
        {
            thread.unpark();
        }
    }
}

/// Ticks `engine` while the returned token lives (its host holds it).
pub fn register(engine: &Engine) -> std::io::Result<Arc<()>> {
    let ticker = ticker()?;
    let token = Arc::new(());
    let mut engines = ticker.engines.lock().expect("ticker lock poisoned");
    engines.push((Arc::downgrade(&token), engine.clone()));
    Ok(token)
}

/// CPU time used by the calling thread.
fn thread_cpu_time() -> Duration {
    #[cfg(unix)]
    {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime only writes the timespec we pass.
        if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } == 0 {
            return Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32);
        }
    }
    // No per-thread clock: fall back to wall time since an arbitrary origin.
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    ORIGIN.get_or_init(Instant::now).elapsed()
}

/// Why a call ran out of time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exhausted {
    /// It computed (or was stuck in the host) past its budget.
    Time,
    /// A memory growth was refused: its charge would overrun the budget.
    Growth,
}

impl Default for CallClock {
    fn default() -> Self {
        Self::new()
    }
}

/// One store's clock: the budget of the call in progress and what it has used.
#[derive(Debug)]
pub struct CallClock {
    /// CPU time the call in progress may use; `None`: no time bound.
    allowance: Option<Duration>,
    started: Instant,
    /// Thread CPU time at (an estimate of) the call's start, read at its first tick.
    cpu_start: Option<Duration>,
    charged: Duration,
    exhausted: Option<Exhausted>,
}

impl CallClock {
    pub fn new() -> Self {
        CallClock {
            allowance: None,
            started: Instant::now(),
            cpu_start: None,
            charged: Duration::ZERO,
            exhausted: None,
        }
    }

    /// Starts a call's clock with `allowance` of CPU time (`None`: unbounded).
    pub fn begin(&mut self, allowance: Option<Duration>) {
        self.allowance = allowance;
        if allowance.is_some() {
            mark_busy();
        }
        self.started = Instant::now();
        self.cpu_start = None;
        self.charged = Duration::ZERO;
        self.exhausted = None;
    }

    /// Why the last call ran out of time, if it did.
    pub fn exhausted(&self) -> Option<Exhausted> {
        self.exhausted
    }

    /// Time used so far: CPU time since the call started, plus growth charges.
    fn used(&mut self) -> Duration {
        let now = thread_cpu_time();
        let start = *self.cpu_start.get_or_insert_with(|| {
            // First look, at most a tick after the start: count the wall time so far (at
            // most a tick; more is time the thread was not running).
            now.saturating_sub(self.started.elapsed().min(TICK))
        });
        now.saturating_sub(start) + self.charged
    }

    /// At an epoch tick inside a running call: go on, or interrupt it.
    pub fn on_tick(&mut self) -> UpdateDeadline {
        mark_busy();
        let Some(allowance) = self.allowance else {
            return UpdateDeadline::Continue(1);
        };
        let backstop = allowance
            .saturating_mul(WALL_BACKSTOP_FACTOR)
            .max(Duration::from_secs(1));
        if self.used() >= allowance || self.started.elapsed() >= backstop {
            self.exhausted = Some(Exhausted::Time);
            return UpdateDeadline::Interrupt;
        }
        UpdateDeadline::Continue(1)
    }

    /// Charges a memory growth of `bytes`; false (refuse it) when that overruns the budget.
    pub fn charge_growth(&mut self, bytes: usize) -> bool {
        let Some(allowance) = self.allowance else {
            return true;
        };
        let charge = GROWTH_CHARGE_PER_MIB.mul_f64(bytes as f64 / (1 << 20) as f64);
        self.charged = self.charged.saturating_add(charge);
        if self.used() >= allowance {
            self.exhausted = Some(Exhausted::Growth);
            return false;
        }
        true
    }
}
