//! RabbitMQ's `x-` queue arguments as the core's queue policy arguments, for the front
//! ends RabbitMQ clients use: AMQP's `queue.declare` arguments and STOMP's queue headers
//! on `SEND` and `SUBSCRIBE`. Arguments not named here are kept as given.

use serde_json::Value;

use crate::message::Headers;

/// The RabbitMQ queue arguments whose values are integers (a STOMP header carries them
/// as text).
pub const INTEGER_ARGUMENTS: [&str; 6] = [
    "x-message-ttl",
    "x-max-length",
    "x-max-length-bytes",
    "x-expires",
    "x-max-priority",
    "x-delivery-limit",
];

/// Every RabbitMQ queue argument this maps (the others pass through unchanged).
pub const ARGUMENTS: [&str; 12] = [
    "x-message-ttl",
    "x-max-length",
    "x-max-length-bytes",
    "x-expires",
    "x-max-priority",
    "x-delivery-limit",
    "x-single-active-consumer",
    "x-overflow",
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-queue-type",
    "x-queue-mode",
];

/// The core's arguments for RabbitMQ's `arguments`; `Err` names the argument refused and
/// why, in RabbitMQ's words ("invalid arg 'x-...': ...").
pub fn core_arguments<'a>(
    arguments: impl IntoIterator<Item = (&'a str, Value)>,
) -> Result<Headers, String> {
    let mut core = Headers::new();
    for (key, value) in arguments {
        let number = |name: &str| {
            value.as_u64().map(Value::from).ok_or_else(|| {
                format!("invalid arg '{name}': {value} is not a non-negative integer")
            })
        };
        match key {
            "x-message-ttl" => {
                core.insert("message_ttl".into(), number(key)?);
            }
            "x-max-length" => {
                core.insert("max_length".into(), number(key)?);
            }
            "x-max-length-bytes" => {
                core.insert("max_length_bytes".into(), number(key)?);
            }
            "x-expires" => match value.as_u64() {
                Some(ms) if ms > 0 => {
                    core.insert("expires".into(), Value::from(ms));
                }
                _ => {
                    return Err(format!(
                        "invalid arg 'x-expires': {value} is not a positive integer"
                    ));
                }
            },
            "x-max-priority" => {
                core.insert("max_priority".into(), number(key)?);
            }
            "x-single-active-consumer" => {
                let on = value
                    .as_bool()
                    .ok_or_else(|| format!("invalid arg 'x-single-active-consumer': {value}"))?;
                core.insert("single_active_consumer".into(), Value::from(on));
            }
            // RabbitMQ's limit counts redeliveries; ours counts deliveries.
            "x-delivery-limit" => {
                let limit = value.as_u64().ok_or_else(|| {
                    format!("invalid arg 'x-delivery-limit': {value} is not a non-negative integer")
                })?;
                core.insert(
                    "max_deliveries".into(),
                    Value::from(limit.saturating_add(1)),
                );
            }
            "x-overflow" => {
                let overflow = match value.as_str() {
                    Some("drop-head") => "drop_head",
                    Some("reject-publish") | Some("reject-publish-dlx") => "reject_publish",
                    _ => return Err(format!("invalid arg 'x-overflow': {value}")),
                };
                core.insert("overflow".into(), Value::from(overflow));
            }
            "x-dead-letter-exchange" => {
                let exchange = value
                    .as_str()
                    .ok_or_else(|| format!("invalid arg 'x-dead-letter-exchange': {value}"))?;
                core.insert("dead_letter_exchange".into(), Value::from(exchange));
            }
            "x-dead-letter-routing-key" => {
                let key = value
                    .as_str()
                    .ok_or_else(|| format!("invalid arg 'x-dead-letter-routing-key': {value}"))?;
                core.insert("dead_letter_routing_key".into(), Value::from(key));
            }
            "x-queue-type" => match value.as_str() {
                Some("classic") | Some("quorum") => {}
                _ => {
                    return Err(format!(
                        "invalid arg 'x-queue-type': {value} (classic and quorum are accepted)"
                    ));
                }
            },
            other => {
                core.insert(other.to_string(), value);
            }
        }
    }
    Ok(core)
}

/// RabbitMQ drops the dead letters of a queue without a dead-letter exchange, where the
/// core's default is a `<queue>.dlq`: what a RabbitMQ client declares gets RabbitMQ's.
pub fn drop_dead_letters_by_default(core: &mut Headers) -> Result<(), String> {
    if core.contains_key("dead_letter_exchange") || core.contains_key("dead_letter") {
        return Ok(());
    }
    if core.contains_key("dead_letter_routing_key") {
        return Err("x-dead-letter-routing-key needs x-dead-letter-exchange".into());
    }
    core.insert("dead_letter".into(), Value::Bool(false));
    Ok(())
}

/// A STOMP header's text as the value RabbitMQ's argument `name` takes: an integer for
/// the integer ones, a boolean for `x-single-active-consumer`, text otherwise (a bad
/// value stays text, for [`core_arguments`] to refuse by name).
pub fn header_value(name: &str, text: &str) -> Value {
    if INTEGER_ARGUMENTS.contains(&name)
        && let Ok(n) = text.trim().parse::<u64>()
    {
        return Value::from(n);
    }
    if name == "x-single-active-consumer" {
        match text.trim() {
            "true" => return Value::Bool(true),
            "false" => return Value::Bool(false),
            _ => {}
        }
    }
    Value::from(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stomp_header_text_maps_like_amqp_values() {
        let headers = [
            ("x-max-length", "10"),
            ("x-message-ttl", "60000"),
            ("x-single-active-consumer", "true"),
            ("x-dead-letter-exchange", "dlx"),
            ("x-overflow", "reject-publish"),
        ];
        let core = core_arguments(
            headers
                .iter()
                .map(|(name, text)| (*name, header_value(name, text))),
        )
        .unwrap();
        assert_eq!(core["max_length"], 10);
        assert_eq!(core["message_ttl"], 60000);
        assert_eq!(core["single_active_consumer"], true);
        assert_eq!(core["dead_letter_exchange"], "dlx");
        assert_eq!(core["overflow"], "reject_publish");
        let refused = core_arguments([("x-max-length", header_value("x-max-length", "ten"))]);
        assert_eq!(
            refused.unwrap_err(),
            "invalid arg 'x-max-length': \"ten\" is not a non-negative integer"
        );
    }
}
