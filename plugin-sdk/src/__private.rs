//! The Wasm glue behind [`export_exchange!`](crate::export_exchange): generated bindings
//! and the adapters between them and the author's [`Exchange`] type. Not a public API.

use std::cell::RefCell;
use std::thread::LocalKey;

use crate::{BindingId, Capabilities, Exchange, Headers, LogLevel, Message, Properties, Value};

pub mod bindings {
    wit_bindgen::generate!({
        path: "wit",
        world: "exchange-plugin",
        pub_export_macro: true,
        export_macro_name: "__export_exchange_world",
        default_bindings_module: "broker_plugin_sdk::__private::bindings",
    });
}

use bindings::broker::plugin::host;
use bindings::exports::broker::plugin::exchange as wit;

pub use wit::Guest;

/// Where the macro keeps the one exchange of this instance.
pub type State<T> = LocalKey<RefCell<Option<T>>>;

pub fn log(level: LogLevel, text: &str) {
    let level = match level {
        LogLevel::Trace => host::LogLevel::Trace,
        LogLevel::Debug => host::LogLevel::Debug,
        LogLevel::Info => host::LogLevel::Info,
        LogLevel::Warn => host::LogLevel::Warn,
        LogLevel::Error => host::LogLevel::Error,
    };
    host::log(level, text);
}

pub fn message_body(index: u32) -> Vec<u8> {
    host::message_body(index)
}

fn value(v: wit::Value) -> Value {
    match v {
        wit::Value::Null => Value::Null,
        wit::Value::Boolean(b) => Value::Bool(b),
        wit::Value::Integer(i) => Value::Int(i),
        wit::Value::Float(f) => Value::Float(f),
        wit::Value::Text(s) => Value::Text(s),
        wit::Value::Json(s) => Value::Json(s),
    }
}

fn headers(list: Vec<wit::Header>) -> Headers {
    list.into_iter()
        .map(|h| crate::Header {
            name: h.name,
            value: value(h.value),
        })
        .collect::<Vec<_>>()
        .into()
}

fn message(msg: wit::Message, index: u32) -> Message {
    let p = msg.properties;
    let properties = Properties {
        persistent: p.persistent,
        message_id: p.message_id,
        correlation_id: p.correlation_id,
        reply_to: p.reply_to,
        content_type: p.content_type,
        priority: p.priority,
        expiration_ms: p.expiration_ms,
        timestamp: p.timestamp,
    };
    Message::from_host(
        msg.routing_key,
        headers(msg.headers),
        properties,
        index,
        msg.body_size,
    )
}

/// Runs `f` on the instance's exchange; calls before a successful `init` are host bugs.
fn with<T: Exchange, R>(state: &'static State<T>, f: impl FnOnce(&mut T) -> R) -> R {
    state.with(|cell| {
        let mut slot = cell.borrow_mut();
        let exchange = slot
            .as_mut()
            .expect("the host calls `init` before any other export");
        f(exchange)
    })
}

pub fn capabilities<T: Exchange>() -> wit::Capabilities {
    crate::log::__install_panic_hook();
    let Capabilities {
        key_only,
        reads_headers,
        reads_body,
    } = T::capabilities();
    wit::Capabilities {
        kind: wit::PluginKind::Exchange,
        key_only,
        reads_headers,
        reads_body,
    }
}

pub fn init<T: Exchange>(
    state: &'static State<T>,
    name: String,
    arguments: Vec<wit::Header>,
) -> Result<(), String> {
    crate::log::__install_panic_hook();
    let exchange = T::new(&name, &headers(arguments))?;
    state.with(|cell| *cell.borrow_mut() = Some(exchange));
    Ok(())
}

pub fn validate_binding<T: Exchange>(
    state: &'static State<T>,
    key: String,
    arguments: Vec<wit::Header>,
) -> Result<(), String> {
    with(state, |ex| ex.validate_binding(&key, &headers(arguments)))
}

pub fn bind<T: Exchange>(
    state: &'static State<T>,
    id: BindingId,
    key: String,
    arguments: Vec<wit::Header>,
) -> Result<(), String> {
    let arguments = headers(arguments);
    with(state, |ex| {
        // Replayed bindings skip the host's validate call, so validate here too.
        ex.validate_binding(&key, &arguments)?;
        ex.bind(id, &key, &arguments)
    })
}

pub fn unbind<T: Exchange>(state: &'static State<T>, id: BindingId) {
    with(state, |ex| ex.unbind(id))
}

pub fn route<T: Exchange>(state: &'static State<T>, msg: wit::Message) -> Vec<BindingId> {
    let msg = message(msg, 0);
    let mut out = Vec::new();
    with(state, |ex| ex.route(&msg, &mut out));
    out
}

pub fn route_batch<T: Exchange>(
    state: &'static State<T>,
    msgs: Vec<wit::Message>,
) -> Vec<Vec<BindingId>> {
    with(state, |ex| {
        msgs.into_iter()
            .enumerate()
            .map(|(index, msg)| {
                let msg = message(msg, index as u32);
                let mut out = Vec::new();
                ex.route(&msg, &mut out);
                out
            })
            .collect()
    })
}

/// Exports `T` as this component's exchange. Use [`export_exchange!`](crate::export_exchange).
#[macro_export]
#[doc(hidden)]
macro_rules! __export_exchange_glue {
    ($ty:ty) => {
        const _: () = {
            use $crate::__private as glue;
            use glue::bindings::exports::broker::plugin::exchange as wit;

            ::std::thread_local! {
                static STATE: ::core::cell::RefCell<::core::option::Option<$ty>> =
                    const { ::core::cell::RefCell::new(::core::option::Option::None) };
            }

            struct Glue;

            impl glue::Guest for Glue {
                fn get_capabilities() -> wit::Capabilities {
                    glue::capabilities::<$ty>()
                }
                fn init(
                    name: ::std::string::String,
                    arguments: ::std::vec::Vec<wit::Header>,
                ) -> ::core::result::Result<(), ::std::string::String> {
                    glue::init(&STATE, name, arguments)
                }
                fn validate_binding(
                    key: ::std::string::String,
                    arguments: ::std::vec::Vec<wit::Header>,
                ) -> ::core::result::Result<(), ::std::string::String> {
                    glue::validate_binding(&STATE, key, arguments)
                }
                fn bind(
                    id: u64,
                    key: ::std::string::String,
                    arguments: ::std::vec::Vec<wit::Header>,
                ) -> ::core::result::Result<(), ::std::string::String> {
                    glue::bind(&STATE, id, key, arguments)
                }
                fn unbind(id: u64) {
                    glue::unbind(&STATE, id)
                }
                fn route(msg: wit::Message) -> ::std::vec::Vec<u64> {
                    glue::route(&STATE, msg)
                }
                fn route_batch(
                    msgs: ::std::vec::Vec<wit::Message>,
                ) -> ::std::vec::Vec<::std::vec::Vec<u64>> {
                    glue::route_batch(&STATE, msgs)
                }
            }

            $crate::__private::bindings::__export_exchange_world!(Glue with_types_in $crate::__private::bindings);
        };
    };
}
