//! RabbitMQ's `x-` queue arguments as the core's queue policy arguments, for the front
//! ends RabbitMQ clients use: AMQP's `queue.declare` arguments and STOMP's queue headers
//! on `SEND` and `SUBSCRIBE`. Arguments not named here are kept as given.

use serde_json::Value;

use crate::message::Headers;

/// What a RabbitMQ queue argument's value must be.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Integer,
    Positive,
    Boolean,
    Text,
}

/// Every RabbitMQ queue argument this maps: its core name (`None`: checked, not kept) and
/// what its value must be. The others pass through unchanged.
const ARGUMENTS: [(&str, Option<&str>, Kind); 13] = [
    ("x-message-ttl", Some("message_ttl"), Kind::Integer),
    ("x-max-length", Some("max_length"), Kind::Integer),
    (
        "x-max-length-bytes",
        Some("max_length_bytes"),
        Kind::Integer,
    ),
    ("x-expires", Some("expires"), Kind::Positive),
    (
        "x-consumer-timeout",
        Some("consumer_timeout"),
        Kind::Positive,
    ),
    ("x-max-priority", Some("max_priority"), Kind::Integer),
    ("x-delivery-limit", Some("max_deliveries"), Kind::Integer),
    (
        "x-single-active-consumer",
        Some("single_active_consumer"),
        Kind::Boolean,
    ),
    ("x-overflow", Some("overflow"), Kind::Text),
    (
        "x-dead-letter-exchange",
        Some("dead_letter_exchange"),
        Kind::Text,
    ),
    (
        "x-dead-letter-routing-key",
        Some("dead_letter_routing_key"),
        Kind::Text,
    ),
    ("x-queue-type", None, Kind::Text),
    ("x-queue-mode", Some("x-queue-mode"), Kind::Text),
];

/// The names of the RabbitMQ queue arguments this maps.
pub fn names() -> impl Iterator<Item = &'static str> {
    ARGUMENTS.iter().map(|(name, _, _)| *name)
}

/// `value` if it is what argument `name` takes; else RabbitMQ's complaint.
fn checked(name: &str, kind: Kind, value: Value) -> Result<Value, String> {
    let fits = match kind {
        Kind::Integer => value.is_u64(),
        Kind::Positive => value.as_u64().is_some_and(|n| n > 0),
        Kind::Boolean => value.is_boolean(),
        Kind::Text => value.is_string(),
    };
    match (fits, kind) {
        (true, _) => Ok(value),
        (false, Kind::Integer) => Err(format!(
            "invalid arg '{name}': {value} is not a non-negative integer"
        )),
        (false, Kind::Positive) => Err(format!(
            "invalid arg '{name}': {value} is not a positive integer"
        )),
        (false, _) => Err(format!("invalid arg '{name}': {value}")),
    }
}

/// The core's arguments for RabbitMQ's `arguments`; `Err` names the argument refused and
/// why, in RabbitMQ's words ("invalid arg 'x-...': ...").
pub fn core_arguments<'a>(
    arguments: impl IntoIterator<Item = (&'a str, Value)>,
) -> Result<Headers, String> {
    let mut core = Headers::new();
    for (key, value) in arguments {
        let Some((_, core_name, kind)) = ARGUMENTS.iter().find(|(name, _, _)| *name == key) else {
            core.insert(key.to_string(), value);
            continue;
        };
        let value = checked(key, *kind, value)?;
        let value = match key {
            // RabbitMQ's limit counts redeliveries; ours counts deliveries.
            "x-delivery-limit" => Value::from(value.as_u64().unwrap_or(0).saturating_add(1)),
            "x-overflow" => match value.as_str() {
                Some("drop-head") => Value::from("drop_head"),
                Some("reject-publish") => Value::from("reject_publish"),
                Some("reject-publish-dlx") => Value::from("reject_publish_dlx"),
                _ => return Err(format!("invalid arg 'x-overflow': {value}")),
            },
            "x-queue-type" if !matches!(value.as_str(), Some("classic") | Some("quorum")) => {
                return Err(format!(
                    "invalid arg 'x-queue-type': {value} (classic and quorum are accepted)"
                ));
            }
            _ => value,
        };
        if let Some(core_name) = core_name {
            core.insert((*core_name).to_string(), value);
        }
    }
    Ok(core)
}

/// The reverse of [`core_arguments`], for an export RabbitMQ can read: the core's names
/// as RabbitMQ's (`message_ttl` as `x-message-ttl`, in milliseconds), the rest as given.
/// A queue that drops its dead letters (`dead_letter: false`, what RabbitMQ does without
/// a dead-letter exchange) says nothing; one with the core's `<queue>.dlq` says
/// `dead_letter: true`, so importing it back keeps it.
pub fn rabbitmq_arguments(core: &Headers) -> Headers {
    let mut arguments = Headers::new();
    for (key, value) in core {
        let Some((name, _, _)) = ARGUMENTS.iter().find(|(_, c, _)| *c == Some(key.as_str())) else {
            if key != "dead_letter" {
                arguments.insert(key.clone(), value.clone());
            }
            continue;
        };
        let value = match key.as_str() {
            "max_deliveries" => Value::from(value.as_u64().unwrap_or(1).saturating_sub(1)),
            "overflow" => Value::from(value.as_str().unwrap_or_default().replace('_', "-")),
            "message_ttl" | "expires" | "consumer_timeout" => {
                crate::queue::duration_ms(value).map_or_else(|_| value.clone(), Value::from)
            }
            _ => value.clone(),
        };
        arguments.insert((*name).to_string(), value);
    }
    let dead_letters_to_dlq = !core.contains_key("dead_letter_exchange")
        && core
            .get("dead_letter")
            .is_none_or(|on| *on == Value::Bool(true));
    if dead_letters_to_dlq {
        arguments.insert("dead_letter".into(), Value::Bool(true));
    }
    arguments
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
/// the integer ones, a boolean for the boolean ones, text otherwise (a bad value stays
/// text, for [`core_arguments`] to refuse by name).
pub fn header_value(name: &str, text: &str) -> Value {
    let kind = ARGUMENTS
        .iter()
        .find(|(known, _, _)| *known == name)
        .map_or(Kind::Text, |(_, _, kind)| *kind);
    let parsed = match kind {
        Kind::Integer | Kind::Positive => text.trim().parse::<u64>().ok().map(Value::from),
        Kind::Boolean => text.trim().parse::<bool>().ok().map(Value::from),
        Kind::Text => None,
    };
    parsed.unwrap_or_else(|| Value::from(text))
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
