//! A test harness for plugin authors: run a built handler `.wasm` through the real host
//! (same compiler, limits and ABI checks as the broker), without starting a broker.
//!
//! ```no_run
//! use broker::Message;
//! use broker::plugin::HandlerOutcome;
//! use broker::plugin::testing::HandlerHarness;
//!
//! let wasm = std::fs::read("target/wasm32-unknown-unknown/release/my_handler.wasm")?;
//! let mut harness = HandlerHarness::new(&wasm, "orders", &[("exchange", "derived")])?;
//! let handled = harness.handle(&Message::text("order.created", r#"{"id":1}"#))?;
//! assert_eq!(handled.outcome, HandlerOutcome::Ack);
//! assert_eq!(handled.published.len(), 1);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::sync::Arc;

use super::handler::{Handled, HandlerError, HandlerSlot, LiveHandler};
use super::limits::Limits;
use super::loader::LoadError;
use super::registry::{HostError, PluginHost};
/// The synthetic messages a deploy routes (handles) before accepting a version, each with
/// a description.
pub use super::samples::sample_messages;
use crate::message::Message;

/// Why the harness could not start the handler.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error(transparent)]
    Host(#[from] HostError),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Handler(#[from] HandlerError),
}

/// A handler plugin initialised for a queue and a configuration. Like the broker, it
/// replaces the instance after a failed call.
pub struct HandlerHarness {
    slot: Arc<HandlerSlot>,
    queue: String,
    config: Vec<(String, String)>,
    live: Option<LiveHandler>,
}

impl HandlerHarness {
    /// Loads `wasm` under the default [`Limits`] and runs its `init` with `config`.
    pub fn new(wasm: &[u8], queue: &str, config: &[(&str, &str)]) -> Result<Self, HarnessError> {
        Self::with_limits(wasm, queue, config, Limits::default())
    }

    pub fn with_limits(
        wasm: &[u8],
        queue: &str,
        config: &[(&str, &str)],
        limits: Limits,
    ) -> Result<Self, HarnessError> {
        let host = PluginHost::new(limits)?;
        host.load_blocking("under-test", wasm)?;
        let config: Vec<(String, String)> = config
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let slot = host.handler("under-test")?;
        let live = slot.instantiate(queue, &config)?;
        Ok(HandlerHarness {
            slot,
            queue: queue.to_owned(),
            config,
            live: Some(live),
        })
    }

    /// Handles `msg` as a first delivery. `Err` is a failed call (trap, CPU budget,
    /// memory): the broker would count a failed delivery with reason `plugin_error`.
    pub fn handle(&mut self, msg: &Message) -> Result<Handled, String> {
        self.handle_delivery(msg, 1)
    }

    /// Handles `msg` as delivery number `delivery_count` (2 and up are redeliveries).
    pub fn handle_delivery(
        &mut self,
        msg: &Message,
        delivery_count: u32,
    ) -> Result<Handled, String> {
        let live = match self.live.take() {
            Some(live) => live,
            None => self
                .slot
                .instantiate(&self.queue, &self.config)
                .map_err(|e| e.to_string())?,
        };
        let mut live = live;
        let result = live.handle(msg, delivery_count);
        if result.is_ok() {
            self.live = Some(live);
        }
        result
    }
}
