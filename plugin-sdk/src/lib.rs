//! Write a broker exchange type or a consumer-side handler as a sandboxed WebAssembly plugin.
//!
//! Exchange: implement [`Exchange`] on a type and add
//! `broker_plugin_sdk::export_exchange!(MyType);`. Handler: write
//! `fn handle(msg: &Message, ctx: &mut Context) -> Outcome` and add
//! `broker_plugin_sdk::export_handler!(handle);`. Build with
//! `cargo build --target wasm32-unknown-unknown --release`: the result is a component the
//! broker loads. Natively the same crate is plain Rust, so it is unit-testable with
//! `cargo test`. See the README for the whole flow.

mod handler;
mod log;
mod message;
mod value;

#[cfg(target_arch = "wasm32")]
#[doc(hidden)]
pub mod __private;

#[cfg(target_arch = "wasm32")]
#[doc(hidden)]
pub mod __handler;

pub use handler::{
    __check_handler, __check_init, Config, Context, HandlerFn, InitFn, Outcome, Published,
    accept_any_config,
};
pub use log::{LogLevel, log};
pub use message::{Message, Properties};
pub use value::{Header, Headers, Value};

/// Identifies a binding; unique across the broker.
pub type BindingId = u64;

/// The major version of the plugin ABI (the WIT package `broker:plugin`) this SDK targets.
pub const ABI_MAJOR_VERSION: u32 = 1;

/// What the host may assume about a plugin, used to skip work on its behalf.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Capabilities {
    /// Routing depends only on the routing key (and the bindings): the host caches
    /// key -> bindings until the bindings change.
    pub key_only: bool,
    /// The plugin looks at headers; otherwise the host does not send them.
    pub reads_headers: bool,
    /// The plugin may call [`Message::body`].
    pub reads_body: bool,
}

impl Capabilities {
    /// Routes on the routing key alone (direct, topic, fanout).
    pub const KEY_ONLY: Capabilities = Capabilities {
        key_only: true,
        reads_headers: false,
        reads_body: false,
    };
    /// Routes on headers (and maybe the key and properties), never the body.
    pub const HEADERS: Capabilities = Capabilities {
        key_only: false,
        reads_headers: true,
        reads_body: false,
    };
}

/// An exchange type: the state of one declared exchange and how it routes.
///
/// The host creates one value per declared exchange with [`Exchange::new`], pushes every
/// binding to it with [`Exchange::bind`] (again after a restart or a plugin failure), and
/// asks [`Exchange::route`] for each message. Returning an error from `new` or `bind`
/// rejects the declaration or the binding; panicking fails the call and the host starts a
/// fresh instance, so keep panics for bugs.
pub trait Exchange: Sized + 'static {
    /// What the host may assume about this exchange type.
    fn capabilities() -> Capabilities;

    /// Creates the state for exchange `exchange`, declared with `arguments`.
    fn new(exchange: &str, arguments: &Headers) -> Result<Self, String>;

    /// Checks a binding without adding it. `bind` is only called with bindings that pass.
    fn validate_binding(&self, key: &str, arguments: &Headers) -> Result<(), String>;

    /// Adds binding `id`; binding an id again replaces its key and arguments.
    fn bind(&mut self, id: BindingId, key: &str, arguments: &Headers) -> Result<(), String>;

    /// Removes binding `id` (unknown ids are ignored).
    fn unbind(&mut self, id: BindingId);

    /// Appends the ids of the bindings that match `msg` to `out` (which starts empty).
    fn route(&mut self, msg: &Message, out: &mut Vec<BindingId>);
}

/// Routes `msg` the way the broker hands it to `E` (for native tests): a key-only
/// exchange gets the routing key alone (no headers, default properties, empty body), one
/// without `reads_headers` no headers. A test routing through this fails when `route`
/// depends on something the exchange's capabilities keep from it.
pub fn route_as_broker<E: Exchange>(exchange: &mut E, msg: &Message) -> Vec<BindingId> {
    let mut out = Vec::new();
    exchange.route(&msg.as_handed(E::capabilities()), &mut out);
    out
}

/// Makes `$ty` (a type implementing [`Exchange`]) this plugin's exchange type.
///
/// On `wasm32` this generates the component's exports; natively it expands to nothing, so
/// the crate still builds and unit-tests as ordinary Rust.
#[macro_export]
macro_rules! export_exchange {
    ($ty:ty) => {
        #[cfg(target_arch = "wasm32")]
        $crate::__export_exchange_glue!($ty);
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Routes to binding 1 when the body or header `x` says "yes".
    struct Peeks;

    impl Exchange for Peeks {
        fn capabilities() -> Capabilities {
            Capabilities::KEY_ONLY
        }
        fn new(_: &str, _: &Headers) -> Result<Self, String> {
            Ok(Peeks)
        }
        fn validate_binding(&self, _: &str, _: &Headers) -> Result<(), String> {
            Ok(())
        }
        fn bind(&mut self, _: BindingId, _: &str, _: &Headers) -> Result<(), String> {
            Ok(())
        }
        fn unbind(&mut self, _: BindingId) {}
        fn route(&mut self, msg: &Message, out: &mut Vec<BindingId>) {
            let header = msg.header("x").and_then(Value::as_str) == Some("yes");
            if msg.body() == b"yes" || header {
                out.push(1);
            }
        }
    }

    #[test]
    fn a_key_only_exchange_is_handed_the_key_alone() {
        let mut ex = Peeks::new("p", &Headers::new()).unwrap();
        let by_body = Message::new("k").with_body("yes");
        let by_header = Message::new("k").with_header("x", "yes");
        let mut out = Vec::new();
        ex.route(&by_body, &mut out);
        assert_eq!(out, [1], "called directly, it sees the body");
        assert!(route_as_broker(&mut ex, &by_body).is_empty());
        assert!(route_as_broker(&mut ex, &by_header).is_empty());
    }
}
