//! Host bindings for the `broker:plugin` WIT package shared with `plugin-sdk`.

wasmtime::component::bindgen!({
    path: "../plugin-sdk/wit",
    world: "exchange-plugin",
    additional_derives: [PartialEq],
    // `message-body` traps a plugin that copies bodies far more than it could need.
    imports: { "broker:plugin/host.message-body": trappable },
});

pub use self::broker::plugin::host::{Host, LogLevel};
pub use self::exports::broker::plugin::exchange as wit;

/// The package that defines the ABI, and the major version this host implements.
pub const ABI_PACKAGE: &str = "broker:plugin";
pub const ABI_MAJOR_VERSION: u64 = 1;
/// The interface an exchange plugin exports, without its `@version` suffix.
pub const EXCHANGE_INTERFACE: &str = "broker:plugin/exchange";
