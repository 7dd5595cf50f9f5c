//! Host bindings for the handler world of the `broker:plugin` WIT package.

wasmtime::component::bindgen!({
    path: "../plugin-sdk/wit",
    world: "handler-plugin",
});

pub use self::broker::plugin::handler_host::Host as PublishHost;
pub use self::broker::plugin::handler_types as wit;
pub use self::broker::plugin::host::{Host as LogHost, LogLevel};

/// The interface a handler plugin exports, without its `@version` suffix.
pub const HANDLER_INTERFACE: &str = "broker:plugin/handler";
