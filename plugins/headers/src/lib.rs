//! The `headers` exchange (RabbitMQ semantics): a binding's arguments are header
//! name/value pairs and `x-match` says how many must match the message's headers:
//! `all` (the default) or `any`, ignoring arguments whose names start with `x-`, or
//! `all-with-x` / `any-with-x`, which count them too. A `null` argument value matches
//! any value of a present header. The routing key is ignored.

use std::collections::BTreeMap;

use broker_plugin_sdk::{BindingId, Capabilities, Exchange, Headers, Message, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MatchKind {
    All,
    Any,
}

#[derive(Debug, Clone, PartialEq)]
struct Binding {
    kind: MatchKind,
    /// The arguments that take part in matching (never `x-match` itself).
    required: Vec<(String, Value)>,
}

impl Binding {
    fn parse(arguments: &Headers) -> Result<Binding, String> {
        let (kind, with_x) = match arguments.get("x-match") {
            None => (MatchKind::All, false),
            Some(Value::Text(mode)) => match mode.as_str() {
                "all" => (MatchKind::All, false),
                "any" => (MatchKind::Any, false),
                "all-with-x" => (MatchKind::All, true),
                "any-with-x" => (MatchKind::Any, true),
                other => return Err(format!("unknown x-match mode `{other}`")),
            },
            Some(other) => return Err(format!("x-match must be a string, not {other:?}")),
        };
        let required = arguments
            .iter()
            .filter(|h| h.name != "x-match" && (with_x || !h.name.starts_with("x-")))
            .map(|h| (h.name.clone(), h.value.clone()))
            .collect();
        Ok(Binding { kind, required })
    }

    fn matches(&self, headers: &Headers) -> bool {
        let mut hits = self.required.iter().map(|(name, want)| {
            headers
                .get(name)
                .is_some_and(|got| value_matches(want, got))
        });
        match self.kind {
            // Like RabbitMQ: `all` with nothing to check matches, `any` does not.
            MatchKind::All => hits.all(|hit| hit),
            MatchKind::Any => hits.any(|hit| hit),
        }
    }
}

/// Whether header value `got` satisfies binding value `want`. Numbers compare by value
/// (`1` equals `1.0`); `null` only asks for the header to be present.
fn value_matches(want: &Value, got: &Value) -> bool {
    match (want, got) {
        (Value::Null, _) => true,
        (Value::Int(_) | Value::Float(_), Value::Int(_) | Value::Float(_)) => {
            want.as_f64() == got.as_f64()
        }
        _ => want == got,
    }
}

#[derive(Default)]
pub struct HeadersExchange {
    bindings: BTreeMap<BindingId, Binding>,
}

impl Exchange for HeadersExchange {
    fn capabilities() -> Capabilities {
        Capabilities::HEADERS
    }

    fn new(_exchange: &str, _arguments: &Headers) -> Result<Self, String> {
        Ok(HeadersExchange::default())
    }

    fn validate_binding(&self, _key: &str, arguments: &Headers) -> Result<(), String> {
        Binding::parse(arguments).map(|_| ())
    }

    fn bind(&mut self, id: BindingId, _key: &str, arguments: &Headers) -> Result<(), String> {
        self.bindings.insert(id, Binding::parse(arguments)?);
        Ok(())
    }

    fn unbind(&mut self, id: BindingId) {
        self.bindings.remove(&id);
    }

    fn route(&mut self, msg: &Message, out: &mut Vec<BindingId>) {
        out.extend(
            self.bindings
                .iter()
                .filter(|(_, binding)| binding.matches(msg.headers()))
                .map(|(&id, _)| id),
        );
    }
}

broker_plugin_sdk::export_exchange!(HeadersExchange);

#[cfg(test)]
mod tests;
