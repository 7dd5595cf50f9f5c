//! The WebAssembly plugin host: every named exchange type is a sandboxed Wasm component.
//!
//! At startup build a [`PluginHost`] (with [`PluginHost::with_standard_exchanges`] for
//! `direct`, `topic`, `fanout`, `headers`) and hand it to the router as its
//! [`ExchangeTypes`](crate::exchange::ExchangeTypes). Custom types come from
//! [`PluginHost::load`]. Each declared exchange gets its own long-lived instance; each
//! call runs under [`Limits`] (fuel, memory, output size), and a failing instance is
//! replaced, its bindings replayed, until too many failures in a row quarantine it.

mod bindings;
mod bundled;
mod convert;
mod epoch;
mod exchange;
mod host_state;
mod instance;
mod key_cache;
mod limits;
mod loader;
mod registry;
mod stats;

pub use bindings::ABI_MAJOR_VERSION;
pub use bundled::STANDARD_EXCHANGES;
pub use exchange::PluginExchange;
pub use limits::Limits;
pub use loader::{Capabilities, LoadError, PluginInfo};
pub use registry::{HostError, PluginHost};
pub use stats::{PluginStats, StatsSnapshot};
