//! The WebAssembly plugin host: every named exchange type and every handler is a
//! sandboxed Wasm component.
//!
//! At startup build a [`PluginHost`] (with [`PluginHost::with_standard_exchanges`] for
//! `direct`, `topic`, `fanout`, `headers` and the other bundled types; the broker takes
//! their compiled code from its store) and hand it to the router as its
//! [`ExchangeTypes`](crate::exchange::ExchangeTypes). Custom types come from
//! [`PluginHost::load`]. Each declared exchange gets its own long-lived instance; each
//! call runs under [`Limits`] (fuel, memory, output size), and a failing instance is
//! replaced, its bindings replayed, until too many failures in a row quarantine it.
//!
//! ```
//! use std::sync::Arc;
//! use broker::exchange::ExchangeTypes;
//! use broker::message::{Headers, Message};
//! use broker::plugin::{Limits, PluginHost};
//!
//! // Startup: compile the standard types (blocking, once).
//! let host = PluginHost::with_standard_exchanges(Limits::default())?;
//! let types: Arc<dyn ExchangeTypes> = Arc::new(host.clone());
//!
//! // Router: one exchange per declaration; bindings pushed as they change.
//! let mut logs = types.create("topic", "logs", &Headers::new())?;
//! logs.bind(1, "app.*.error", &Headers::new())?;
//! let mut out = Vec::new();
//! logs.route(&Message::text("app.web.error", "disk full"), &mut out)?;
//! assert_eq!(out, [1]);
//!
//! // Metrics and operations.
//! assert_eq!(host.stats("topic").unwrap().errors, 0);
//! assert_eq!(host.is_quarantined("logs"), Some(false));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod binding_map;
mod bindings;
mod bundled;
mod convert;
mod epoch;
mod exchange;
mod handler;
mod handler_bindings;
mod health;
mod host_state;
mod instance;
mod key_cache;
mod limits;
mod loader;
mod log_ring;
mod prepared;
mod registry;
mod samples;
mod stats;
pub mod testing;
mod trial;
mod trial_lane;

pub use bindings::ABI_MAJOR_VERSION;
pub use bundled::{STANDARD_EXCHANGES, STANDARD_HANDLERS};
pub use exchange::PluginExchange;
pub use handler::{
    Handled, HandlerError, HandlerOutcome, HandlerSlot, HandlerVersion, LiveHandler,
    MAX_PUBLISH_BYTES_PER_CALL, MAX_PUBLISHES_PER_CALL,
};
pub use health::LogThrottle;
pub use limits::{DEFAULT_CALL_TIME, Limits};
pub use loader::{Capabilities, LoadError, PluginInfo, PluginSource};
pub use log_ring::{LOG_RING_LINES, LogLine};
pub(crate) use registry::lower_thread_priority;
pub use registry::{HostError, PluginHost, PreparedPlugin, content_hash};
pub use stats::{CALL_TIME_BUCKETS, PluginStats, StatsSnapshot, call_time_bucket_bound};
pub use trial::{
    Difference, TRIAL_EXAMPLES, TrialCounts, TrialError, TrialMode, TrialReport, TrialSnapshot,
};
