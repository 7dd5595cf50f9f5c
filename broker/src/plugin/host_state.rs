//! What a plugin's store holds: its limits, the clock and messages of the current call,
//! and a panic message the guest reported before trapping.

use std::sync::Arc;

use bytes::Bytes;
use wasmtime::{ResourceLimiter, Store, StoreLimits, StoreLimitsBuilder};

use super::bindings::{Host, LogLevel};
use super::epoch::CallClock;
use super::limits::Limits;
use super::log_ring::LogRing;

/// How the SDK's panic hook starts the line it logs: the host keeps it as the failure's
/// reason instead of logging it (failure logs are rate-limited, plain logs are not).
pub const PANIC_PREFIX: &str = "panicked at ";

/// How many message budgets setting up an instance gets (see [`HostState::arm_setup`]).
pub const SETUP_BUDGET_FACTOR: u32 = 10;

/// Each body may be fetched this many times per call...
const BODY_COPIES_PER_CALL: usize = 4;
/// ...plus this many bytes, so empty bodies can be fetched too.
const BODY_COPY_SLACK: usize = 64 << 10;

pub struct HostState {
    limiter: Limiter,
    /// Bodies of the messages being routed, for `message-body` (cheap `Bytes` clones).
    pub bodies: Vec<Bytes>,
    log_lines_left: u32,
    /// Body bytes the plugin may still copy in this call: host time spent copying is not
    /// metered by fuel, so a loop fetching a large body must not run unchecked.
    body_bytes_left: usize,
    limits: Limits,
    plugin: Arc<str>,
    exchange: Arc<str>,
    /// What the guest's panic hook reported in this call.
    panic: Option<String>,
    /// Where its log lines are kept for `plugin_logs` (besides the broker's log).
    log: Option<Arc<LogRing>>,
    /// A key-only plugin: `message-body` hands it nothing (its results are cached by
    /// routing key, so they must not depend on the body).
    body_hidden: bool,
    /// Whether it asked for a body while `body_hidden` (deploy checks refuse that).
    asked_for_hidden_body: bool,
    /// The fuel the current call started with (0 when fuel is not metered).
    armed_fuel: u64,
}

impl HostState {
    pub fn new(limits: &Limits, plugin: Arc<str>, exchange: Arc<str>) -> Self {
        HostState {
            limiter: Limiter {
                inner: StoreLimitsBuilder::new()
                    .memory_size(limits.memory_bytes)
                    .trap_on_grow_failure(true)
                    .build(),
                memory_denied: false,
                clock: CallClock::new(),
            },
            bodies: Vec::new(),
            log_lines_left: limits.max_log_lines_per_call,
            body_bytes_left: 0,
            limits: limits.clone(),
            plugin,
            exchange,
            panic: None,
            log: None,
            body_hidden: false,
            asked_for_hidden_body: false,
            armed_fuel: 0,
        }
    }

    /// Hands the plugin no body (a key-only plugin).
    pub fn with_body_hidden(mut self, hidden: bool) -> Self {
        self.body_hidden = hidden;
        self
    }

    /// Whether the plugin asked for a body it is not given (see [`Self::with_body_hidden`]).
    pub fn asked_for_hidden_body(&self) -> bool {
        self.asked_for_hidden_body
    }

    /// Keeps the plugin's log lines in `ring` too.
    pub fn with_log(mut self, ring: Arc<LogRing>) -> Self {
        self.log = Some(ring);
        self
    }

    /// Sets up a store around this state: memory limits, and the clock that interrupts a
    /// call past its time budget. `host` finds the `HostState` in the store's data.
    pub fn install<T: 'static>(store: &mut Store<T>, host: fn(&mut T) -> &mut HostState) {
        store.limiter(move |data| host(data).limiter());
        store.epoch_deadline_callback(move |mut ctx| {
            Ok(host(ctx.data_mut()).limiter.clock.on_tick())
        });
    }

    /// Arms a store for one call (after `bodies` is filled): fuel and time for the bodies
    /// it carries, fresh log and body-copy allowances.
    pub fn arm<T>(store: &mut Store<T>, host: fn(&mut T) -> &mut HostState) {
        Self::arm_scaled(store, host, 1);
    }

    /// Arms a store for setting up an instance (instantiation, `init`, capabilities):
    /// work done once per instance, mostly by the host (creating and filling its memory),
    /// which gets [`SETUP_BUDGET_FACTOR`] times a message's budget.
    pub fn arm_setup<T>(store: &mut Store<T>, host: fn(&mut T) -> &mut HostState) {
        Self::arm_scaled(store, host, SETUP_BUDGET_FACTOR);
    }

    fn arm_scaled<T>(store: &mut Store<T>, host: fn(&mut T) -> &mut HostState, factor: u32) {
        let state = host(store.data_mut());
        let bodies = state.begin_call();
        let fuel = state
            .limits
            .fuel_for(bodies)
            .saturating_mul(u64::from(factor));
        let time = state
            .limits
            .time_for(bodies)
            .map(|t| t.saturating_mul(factor));
        state.limiter.clock.begin(time);
        state.armed_fuel = if state.limits.meter_fuel { fuel } else { 0 };
        if state.limits.meter_fuel {
            store
                .set_fuel(fuel)
                .expect("the engine is configured to consume fuel");
        }
        if time.is_some() {
            store.set_epoch_deadline(1);
        }
    }

    pub fn limiter(&mut self) -> &mut dyn ResourceLimiter {
        &mut self.limiter
    }

    /// Prepares for a call (after `bodies` is filled): fresh log and body-copy allowances,
    /// nothing left from an earlier call. Returns the bytes of the call's bodies.
    fn begin_call(&mut self) -> usize {
        self.log_lines_left = self.limits.max_log_lines_per_call;
        let bodies: usize = self.bodies.iter().map(Bytes::len).sum();
        self.body_bytes_left = bodies.saturating_mul(BODY_COPIES_PER_CALL) + BODY_COPY_SLACK;
        self.limiter.memory_denied = false;
        self.panic = None;
        bodies
    }

    /// The part of a log line the plugin may still write in this call: `None` once it used
    /// up its lines (or when the line is a panic report, kept for the failure instead),
    /// otherwise `text` cut to the line limit (on a char boundary).
    pub fn admit_log<'a>(&mut self, is_error: bool, text: &'a str) -> Option<&'a str> {
        let text = cut(text, self.limits.max_log_line_bytes);
        if is_error && text.starts_with(PANIC_PREFIX) {
            self.panic.get_or_insert_with(|| text.to_owned());
            return None;
        }
        if self.log_lines_left == 0 {
            return None;
        }
        self.log_lines_left -= 1;
        Some(text)
    }

    /// The fuel the last call used, when fuel is metered.
    pub fn fuel_used<T>(store: &Store<T>, host: fn(&T) -> &HostState) -> Option<u64> {
        let armed = host(store.data()).armed_fuel;
        let left = store.get_fuel().ok()?;
        (armed > 0).then(|| armed.saturating_sub(left))
    }

    /// The panic message the guest reported in the last call, if it did.
    pub fn panic_message(&self) -> Option<&str> {
        self.panic.as_deref()
    }

    /// Why the last call ran out of time, if it did.
    pub fn exhausted(&self) -> Option<super::epoch::Exhausted> {
        self.limiter.clock.exhausted()
    }

    /// Whether the last failure was a memory growth the limits refused.
    pub fn memory_denied(&self) -> bool {
        self.limiter.memory_denied
    }
}

/// `text` cut to at most `max` bytes, on a char boundary.
fn cut(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// `StoreLimits` (which traps on a refused growth) plus a note that it refused, so a
/// failure can be reported as memory exhaustion rather than a generic trap; and the call's
/// clock, which charges every growth against the call's time budget.
struct Limiter {
    inner: StoreLimits,
    memory_denied: bool,
    clock: CallClock,
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let result = self.inner.memory_growing(current, desired, maximum);
        if !matches!(result, Ok(true)) {
            self.memory_denied = true;
            return result;
        }
        if !self.clock.charge_growth(desired.saturating_sub(current)) {
            return Err(wasmtime::format_err!(
                "memory growth past the call's time budget"
            ));
        }
        result
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.inner.table_growing(current, desired, maximum)
    }

    fn instances(&self) -> usize {
        self.inner.instances()
    }

    fn tables(&self) -> usize {
        self.inner.tables()
    }

    fn memories(&self) -> usize {
        self.inner.memories()
    }
}

impl Host for HostState {
    fn log(&mut self, level: LogLevel, text: String) {
        let is_error = matches!(level, LogLevel::Error);
        let Some(text) = self.admit_log(is_error, &text) else {
            return;
        };
        let (plugin, exchange) = (&*self.plugin, &*self.exchange);
        if let Some(ring) = &self.log {
            let name = match level {
                LogLevel::Trace => "trace",
                LogLevel::Debug => "debug",
                LogLevel::Info => "info",
                LogLevel::Warn => "warn",
                LogLevel::Error => "error",
            };
            ring.push(name, exchange, text);
        }
        match level {
            LogLevel::Trace => tracing::trace!(plugin, exchange, "{text}"),
            LogLevel::Debug => tracing::debug!(plugin, exchange, "{text}"),
            LogLevel::Info => tracing::info!(plugin, exchange, "{text}"),
            LogLevel::Warn => tracing::warn!(plugin, exchange, "{text}"),
            LogLevel::Error => tracing::error!(plugin, exchange, "{text}"),
        }
    }

    fn message_body(&mut self, index: u32) -> wasmtime::Result<Vec<u8>> {
        if self.body_hidden {
            if !self.asked_for_hidden_body {
                // Once per instance: it routes as if every body were empty.
                let text = "asked for a message body, but it declares key_only: it is \
                            handed none (declare reads_body to read bodies)";
                let (plugin, exchange) = (&*self.plugin, &*self.exchange);
                tracing::warn!(plugin, exchange, "{text}");
                if let Some(ring) = &self.log {
                    ring.push("warn", exchange, text);
                }
            }
            self.asked_for_hidden_body = true;
            return Ok(Vec::new());
        }
        let Some(body) = self.bodies.get(index as usize) else {
            return Ok(Vec::new());
        };
        self.body_bytes_left = self
            .body_bytes_left
            .checked_sub(body.len())
            .ok_or_else(|| wasmtime::format_err!("plugin fetched message bodies too often"))?;
        Ok(body.to_vec())
    }
}
