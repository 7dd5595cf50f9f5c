//! The Wasm glue behind [`export_handler!`](crate::export_handler): generated bindings and
//! the adapters between them and the author's handler function. Not a public API.

use std::cell::RefCell;
use std::rc::Rc;

use crate::handler::{Config, Context, HandlerFn, InitFn, Outcome};
use crate::{Header, Headers, Message, Properties, Value};

pub mod bindings {
    wit_bindgen::generate!({
        path: "wit",
        world: "handler-plugin",
        pub_export_macro: true,
        export_macro_name: "__export_handler_world",
        default_bindings_module: "broker_plugin_sdk::__handler::bindings",
    });
}

use bindings::broker::plugin::handler_host;
use bindings::broker::plugin::handler_types as t;

pub use bindings::exports::broker::plugin::handler::Guest;
pub type WitMessage = t::Message;
pub type WitOutcome = t::Outcome;

thread_local! {
    /// The attachment's queue and configuration, set by `init`.
    static ATTACHMENT: RefCell<Option<(String, Rc<Config>)>> = const { RefCell::new(None) };
}

fn value(v: t::Value) -> Value {
    match v {
        t::Value::Null => Value::Null,
        t::Value::Boolean(b) => Value::Bool(b),
        t::Value::Integer(i) => Value::Int(i),
        t::Value::Float(f) => Value::Float(f),
        t::Value::Text(s) => Value::Text(s),
        t::Value::Json(s) => Value::Json(s),
    }
}

fn wit_value(v: &Value) -> t::Value {
    match v {
        Value::Null => t::Value::Null,
        Value::Bool(b) => t::Value::Boolean(*b),
        Value::Int(i) => t::Value::Integer(*i),
        Value::Float(f) => t::Value::Float(*f),
        Value::Text(s) => t::Value::Text(s.clone()),
        Value::Json(s) => t::Value::Json(s.clone()),
    }
}

fn wit_headers(headers: &Headers) -> Vec<t::Header> {
    headers
        .iter()
        .map(|h| t::Header {
            name: h.name.clone(),
            value: wit_value(&h.value),
        })
        .collect()
}

fn properties(p: t::Properties) -> Properties {
    Properties {
        persistent: p.persistent,
        message_id: p.message_id,
        correlation_id: p.correlation_id,
        reply_to: p.reply_to,
        content_type: p.content_type,
        priority: p.priority,
        expiration_ms: p.expiration_ms,
        timestamp: p.timestamp,
    }
}

fn wit_properties(p: &Properties) -> t::Properties {
    t::Properties {
        persistent: p.persistent,
        message_id: p.message_id.clone(),
        correlation_id: p.correlation_id.clone(),
        reply_to: p.reply_to.clone(),
        content_type: p.content_type.clone(),
        priority: p.priority,
        expiration_ms: p.expiration_ms,
        timestamp: p.timestamp,
    }
}

pub fn init(
    queue: String,
    config: Vec<(String, String)>,
    check: &impl InitFn,
) -> Result<(), String> {
    crate::log::__install_panic_hook();
    let config = Config::from(config);
    check.call(&queue, &config)?;
    ATTACHMENT.with(|cell| *cell.borrow_mut() = Some((queue, Rc::new(config))));
    Ok(())
}

pub fn handle(handler: &impl HandlerFn, msg: t::Message) -> t::Outcome {
    let (queue, config) = ATTACHMENT.with(|cell| {
        cell.borrow()
            .clone()
            .expect("the host calls `init` before `handle`")
    });
    let headers: Headers = msg
        .headers
        .into_iter()
        .map(|h| Header {
            name: h.name,
            value: value(h.value),
        })
        .collect::<Vec<_>>()
        .into();
    let message = Message::new(msg.routing_key)
        .with_headers(headers)
        .with_properties(properties(msg.properties))
        .with_body(msg.body);
    let mut ctx = Context::for_call(queue, msg.exchange, msg.delivery_count, config);
    match handler.call(&message, &mut ctx) {
        Outcome::Ack => t::Outcome::Ack,
        Outcome::Retry { delay_ms } => t::Outcome::Retry(delay_ms),
        Outcome::Reject(reason) => t::Outcome::Reject(reason),
        Outcome::Drop => t::Outcome::Drop,
        Outcome::Deliver(m) => t::Outcome::Deliver(t::Output {
            routing_key: m.routing_key().to_owned(),
            headers: wit_headers(m.headers()),
            properties: wit_properties(m.properties()),
            body: m.body(),
        }),
    }
}

pub fn publish(exchange: &str, routing_key: &str, message: &Message) -> Result<(), String> {
    handler_host::publish(
        exchange,
        routing_key,
        &wit_headers(message.headers()),
        &wit_properties(message.properties()),
        &message.body(),
    )
}

/// Exports `$handle` as this component's handler. Use [`export_handler!`](crate::export_handler).
#[macro_export]
#[doc(hidden)]
macro_rules! __export_handler_glue {
    ($handle:expr, $init:expr) => {
        const _: () = {
            use $crate::__handler as glue;

            struct Glue;

            impl glue::Guest for Glue {
                fn init(
                    queue: ::std::string::String,
                    config: ::std::vec::Vec<(::std::string::String, ::std::string::String)>,
                ) -> ::core::result::Result<(), ::std::string::String> {
                    glue::init(queue, config, &$init)
                }
                fn handle(msg: glue::WitMessage) -> glue::WitOutcome {
                    glue::handle(&$handle, msg)
                }
            }

            $crate::__handler::bindings::__export_handler_world!(Glue with_types_in $crate::__handler::bindings);
        };
    };
}
