//! A RabbitMQ exchange declaration (type and arguments) as the core's, for the ways
//! RabbitMQ's declarations reach this broker: AMQP's `exchange.declare` and RabbitMQ
//! definitions files (`broker definitions import`), and back for `broker definitions
//! export`. RabbitMQ's plugin exchange types that a bundled plugin does the same as are
//! that plugin: `x-consistent-hash` is `consistent-hash`, `x-random` is `random`.

use serde_json::Value;

use crate::message::Headers;

/// RabbitMQ's delayed message exchange type (the plugin of that name).
const DELAYED_MESSAGE_TYPE: &str = "x-delayed-message";

/// A RabbitMQ plugin exchange type and the bundled plugin that routes as it does.
struct PluginType {
    rabbitmq: &'static str,
    plugin: &'static str,
    /// (RabbitMQ's argument, the plugin's).
    renamed: &'static [(&'static str, &'static str)],
}

const PLUGIN_TYPES: [PluginType; 2] = [
    PluginType {
        rabbitmq: "x-consistent-hash",
        plugin: "consistent-hash",
        renamed: &[("hash-header", "hash_header")],
    },
    PluginType {
        rabbitmq: "x-random",
        plugin: "random",
        renamed: &[],
    },
];

/// The reverse of [`exchange_declaration`], for an export RabbitMQ can read.
pub fn rabbitmq_exchange(kind: &str, core: &Headers) -> (String, Headers) {
    let mut args = core.clone();
    if let Some(alternate) = args.remove("alternate_exchange") {
        args.insert("alternate-exchange".into(), alternate);
    }
    let mut kind = kind;
    if let Some(known) = PLUGIN_TYPES.iter().find(|t| t.plugin == kind) {
        for (theirs, ours) in known.renamed {
            if let Some(value) = args.remove(*ours) {
                args.insert((*theirs).into(), value);
            }
        }
        kind = known.rabbitmq;
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
    let kind = plugin_type(kind, &mut args)?;
    let kind = kind.as_str();
    if kind != DELAYED_MESSAGE_TYPE {
        return Ok((kind.to_string(), args));
    }
    let Some(Value::String(delayed_type)) = args.get("x-delayed-type") else {
        return Err("Invalid argument, 'x-delayed-type' must be an existing exchange type".into());
    };
    let mut delayed_type = delayed_type.clone();
    delayed_type = plugin_type(&delayed_type, &mut args)?;
    args.insert(crate::router::DELAYED.into(), Value::Bool(true));
    Ok((delayed_type, args))
}

/// The bundled plugin for RabbitMQ's plugin exchange type `kind` (its arguments renamed
/// in `args`), or `kind` itself.
fn plugin_type(kind: &str, args: &mut Headers) -> Result<String, String> {
    let Some(known) = PLUGIN_TYPES.iter().find(|t| t.rabbitmq == kind) else {
        return Ok(kind.to_string());
    };
    if kind == "x-consistent-hash" && args.contains_key("hash-property") {
        return Err(
            "Invalid argument 'hash-property': not supported here (hash-header is)".to_string(),
        );
    }
    for (theirs, ours) in known.renamed {
        if let Some(value) = args.remove(*theirs) {
            args.insert((*ours).into(), value);
        }
    }
    Ok(known.plugin.to_string())
}
