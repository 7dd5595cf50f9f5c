//! A RabbitMQ exchange declaration (type and arguments) as the core's, for the ways
//! RabbitMQ's declarations reach this broker: AMQP's `exchange.declare` and RabbitMQ
//! definitions files (`broker definitions import`).

use serde_json::Value;

use crate::message::Headers;

/// RabbitMQ's delayed message exchange type (the plugin of that name).
const DELAYED_MESSAGE_TYPE: &str = "x-delayed-message";

/// The reverse of [`exchange_declaration`], for an export RabbitMQ can read.
pub fn rabbitmq_exchange(kind: &str, core: &Headers) -> (String, Headers) {
    let mut args = core.clone();
    if let Some(alternate) = args.remove("alternate_exchange") {
        args.insert("alternate-exchange".into(), alternate);
    }
    match args.remove(crate::router::DELAYED) {
        Some(Value::Bool(true)) => {
            args.insert("x-delayed-type".into(), Value::from(kind));
            (DELAYED_MESSAGE_TYPE.to_string(), args)
        }
        _ => (kind.to_string(), args),
    }
}

/// The core's exchange type and arguments for RabbitMQ's: `alternate-exchange` is the
/// core's `alternate_exchange`; type `x-delayed-message` is an exchange of its
/// `x-delayed-type` with the core's `delayed` argument. The rest goes to the plugin as
/// given. `Err` says why, in RabbitMQ's words.
pub fn exchange_declaration(kind: &str, mut args: Headers) -> Result<(String, Headers), String> {
    if let Some(alternate) = args.remove("alternate-exchange") {
        args.insert("alternate_exchange".into(), alternate);
    }
    if kind != DELAYED_MESSAGE_TYPE {
        return Ok((kind.to_string(), args));
    }
    let Some(Value::String(delayed_type)) = args.get("x-delayed-type") else {
        return Err("Invalid argument, 'x-delayed-type' must be an existing exchange type".into());
    };
    let delayed_type = delayed_type.clone();
    args.insert(crate::router::DELAYED.into(), Value::Bool(true));
    Ok((delayed_type, args))
}
