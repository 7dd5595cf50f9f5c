//! Exchanges: given a message, which bindings (and so which queues) receive it.
//!
//! The default exchange `""` is native (routing key = queue name) and lives in the router.
//! Every named exchange type comes from an [`ExchangeTypes`] registry — the Wasm plugin
//! host in production — which creates one [`Exchange`] per declared exchange. The router
//! pushes bindings into it as they change, so routing a message only passes the message.

pub mod rabbitmq_arguments;

use crate::message::{Headers, Message};

/// Identifies one binding; unique across the broker, stable across restarts.
pub type BindingId = u64;

/// Why an exchange could not be created, bound or asked to route.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ExchangeError {
    #[error("unknown exchange type `{0}`")]
    UnknownType(String),
    #[error("invalid binding: {0}")]
    InvalidBinding(String),
    #[error("invalid exchange arguments: {0}")]
    InvalidArguments(String),
    /// The exchange's plugin failed (trap, limit, malformed output); the message was not routed.
    #[error("exchange plugin failed: {0}")]
    PluginFailed(String),
    /// Too many consecutive plugin failures: the exchange refuses work until reset or redeployed.
    #[error("exchange is quarantined: {0}")]
    Unavailable(String),
}

/// One declared exchange's routing logic.
pub trait Exchange: Send {
    /// Checks a binding without adding it (e.g. a malformed topic pattern).
    fn validate_binding(&mut self, key: &str, arguments: &Headers) -> Result<(), ExchangeError>;
    /// Adds a binding; called once per binding at declare time and again at recovery.
    fn bind(&mut self, id: BindingId, key: &str, arguments: &Headers) -> Result<(), ExchangeError>;
    /// Removes a binding.
    fn unbind(&mut self, id: BindingId) -> Result<(), ExchangeError>;
    /// Appends the ids of the bindings that match `msg` to `out` (duplicates allowed; the
    /// router delivers at most once per queue).
    fn route(&mut self, msg: &Message, out: &mut Vec<BindingId>) -> Result<(), ExchangeError>;

    /// Routes `msg` only if that is cheap and cannot fail in the plugin (a key-only
    /// route already cached, or a refusal while quarantined): `None` means a real call
    /// is needed. Ingress tries this on the publisher's own task before handing the
    /// message to an exchange worker.
    fn route_cached(&mut self, _msg: &Message) -> Option<Result<Vec<BindingId>, ExchangeError>> {
        None
    }

    /// [`Exchange::route_cached`] with the message's draw: a number ingress draws once per
    /// message (uniform over `u32`), before any cache lookup, so that when a canary
    /// version routes a share of the messages each message is routed by exactly one
    /// version, however many lookups it takes.
    fn route_cached_drawn(
        &mut self,
        msg: &Message,
        _draw: u32,
    ) -> Option<Result<Vec<BindingId>, ExchangeError>> {
        self.route_cached(msg)
    }

    /// [`Exchange::route_batch`] with each message's draw (see
    /// [`Exchange::route_cached_drawn`]).
    fn route_batch_drawn(
        &mut self,
        msgs: &[&Message],
        _draws: &[u32],
    ) -> Vec<Result<Vec<BindingId>, ExchangeError>> {
        self.route_batch(msgs)
    }

    /// Whether a shadow version runs next to this exchange's routing: ingress then hands
    /// what it routed to [`Exchange::shadow_batch`] after answering the publishers.
    fn shadows(&self) -> bool {
        false
    }

    /// Routes `msgs` by the shadow version and compares with `routed` (what the active
    /// version did); changes nothing. Stops (the rest counted as skipped) once `behind`
    /// says publishes are piling up, so a shadow never makes its exchange fall behind.
    fn shadow_batch(
        &mut self,
        _msgs: &[&Message],
        _routed: &[Result<Vec<BindingId>, ExchangeError>],
        _behind: &dyn Fn() -> bool,
    ) {
    }

    /// The plugin version that routes (`None` for a native exchange).
    fn plugin_version(&self) -> Option<u64> {
        None
    }

    /// Routes several messages at once (one call into a plugin instead of one per
    /// message); the router uses it when several publishes to one exchange are waiting.
    fn route_batch(&mut self, msgs: &[&Message]) -> Vec<Result<Vec<BindingId>, ExchangeError>> {
        msgs.iter()
            .map(|msg| {
                let mut out = Vec::new();
                self.route(msg, &mut out).map(|()| out)
            })
            .collect()
    }
}

/// The exchange types the broker knows, by name.
pub trait ExchangeTypes: Send + Sync {
    /// Creates the routing state for a newly declared (or recovered) exchange.
    fn create(
        &self,
        type_name: &str,
        exchange: &str,
        arguments: &Headers,
    ) -> Result<Box<dyn Exchange>, ExchangeError>;
}
