//! What a plugin's store holds: its limits and the messages of the current call.

use std::sync::Arc;

use bytes::Bytes;
use wasmtime::{ResourceLimiter, StoreLimits, StoreLimitsBuilder};

use super::bindings::{Host, LogLevel};
use super::limits::Limits;

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
    max_log_lines: u32,
    max_log_line_bytes: usize,
    plugin: Arc<str>,
    exchange: Arc<str>,
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
            },
            bodies: Vec::new(),
            log_lines_left: limits.max_log_lines_per_call,
            body_bytes_left: 0,
            max_log_lines: limits.max_log_lines_per_call,
            max_log_line_bytes: limits.max_log_line_bytes,
            plugin,
            exchange,
        }
    }

    pub fn limiter(&mut self) -> &mut dyn ResourceLimiter {
        &mut self.limiter
    }

    /// Prepares for a call (after `bodies` is filled): fresh log and body-copy allowances,
    /// no "memory denied" left from an earlier call.
    pub fn begin_call(&mut self) {
        self.log_lines_left = self.max_log_lines;
        let bodies: usize = self.bodies.iter().map(Bytes::len).sum();
        self.body_bytes_left = bodies.saturating_mul(BODY_COPIES_PER_CALL) + BODY_COPY_SLACK;
        self.limiter.memory_denied = false;
    }

    /// The part of a log line the plugin may still write in this call: `None` once it used
    /// up its lines, otherwise `text` cut to the line limit (on a char boundary).
    pub fn admit_log<'a>(&mut self, text: &'a str) -> Option<&'a str> {
        if self.log_lines_left == 0 {
            return None;
        }
        self.log_lines_left -= 1;
        let mut end = text.len().min(self.max_log_line_bytes);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        Some(&text[..end])
    }

    /// Whether the last failure was a memory growth the limits refused.
    pub fn memory_denied(&self) -> bool {
        self.limiter.memory_denied
    }
}

/// `StoreLimits` (which traps on a refused growth) plus a note that it refused, so a
/// failure can be reported as memory exhaustion rather than a generic trap.
struct Limiter {
    inner: StoreLimits,
    memory_denied: bool,
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
        let Some(text) = self.admit_log(&text) else {
            return;
        };
        let (plugin, exchange) = (&*self.plugin, &*self.exchange);
        match level {
            LogLevel::Trace => tracing::trace!(plugin, exchange, "{text}"),
            LogLevel::Debug => tracing::debug!(plugin, exchange, "{text}"),
            LogLevel::Info => tracing::info!(plugin, exchange, "{text}"),
            LogLevel::Warn => tracing::warn!(plugin, exchange, "{text}"),
            LogLevel::Error => tracing::error!(plugin, exchange, "{text}"),
        }
    }

    fn message_body(&mut self, index: u32) -> wasmtime::Result<Vec<u8>> {
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
