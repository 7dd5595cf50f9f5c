//! The `schema-gate` exchange: validates JSON bodies against a schema given as the exchange
//! argument `schema` (the subset in [`schema`]). A valid message goes to the bindings whose
//! key equals its routing key, like `direct`; an invalid one (including a body that is not
//! JSON) goes to the bindings whose key is the rejects key (argument `rejects_key`, default
//! `#invalid`) whatever its routing key: a rejects queue. Rejects bindings never receive
//! valid messages.

pub mod schema;

use std::collections::HashMap;

use broker_plugin_sdk::{BindingId, Capabilities, Exchange, Headers, LogLevel, Message, Value};

use schema::Schema;

/// The binding key of the rejects bindings unless `rejects_key` says otherwise.
pub const DEFAULT_REJECTS_KEY: &str = "#invalid";

pub struct SchemaGate {
    name: String,
    schema: Schema,
    rejects_key: String,
    by_key: HashMap<String, Vec<BindingId>>,
    keys: HashMap<BindingId, String>,
}

/// The `schema` argument: a JSON object (arrives as JSON text) or a string holding one.
fn parse_schema(value: Option<&Value>) -> Result<Schema, String> {
    let text = match value {
        Some(Value::Json(text) | Value::Text(text)) => text,
        Some(_) => return Err("schema must be a JSON object".to_owned()),
        None => return Err("a schema-gate exchange needs a `schema` argument".to_owned()),
    };
    let json: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("schema is not JSON: {e}"))?;
    Schema::compile(&json, "$").map_err(|e| format!("bad schema: {e}"))
}

impl SchemaGate {
    /// Why `body` fails the schema, if it does.
    pub fn check(&self, body: &[u8]) -> Result<(), String> {
        let doc: serde_json::Value =
            serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
        self.schema.validate(&doc, &mut "$".to_owned())
    }
}

impl Exchange for SchemaGate {
    fn capabilities() -> Capabilities {
        Capabilities {
            key_only: false,
            reads_headers: false,
            reads_body: true,
        }
    }

    fn new(exchange: &str, arguments: &Headers) -> Result<Self, String> {
        let mut rejects_key = DEFAULT_REJECTS_KEY.to_owned();
        for arg in arguments {
            match (arg.name.as_str(), &arg.value) {
                ("schema", _) => {}
                ("rejects_key", Value::Text(key)) => rejects_key = key.clone(),
                ("rejects_key", _) => return Err("rejects_key must be a string".to_owned()),
                (other, _) => {
                    return Err(format!(
                        "unknown schema-gate argument `{other}` (known: schema, rejects_key)"
                    ));
                }
            }
        }
        Ok(SchemaGate {
            name: exchange.to_owned(),
            schema: parse_schema(arguments.get("schema"))?,
            rejects_key,
            by_key: HashMap::new(),
            keys: HashMap::new(),
        })
    }

    fn validate_binding(&self, _key: &str, _arguments: &Headers) -> Result<(), String> {
        Ok(())
    }

    fn bind(&mut self, id: BindingId, key: &str, _arguments: &Headers) -> Result<(), String> {
        self.unbind(id);
        self.by_key.entry(key.to_owned()).or_default().push(id);
        self.keys.insert(id, key.to_owned());
        Ok(())
    }

    fn unbind(&mut self, id: BindingId) {
        let Some(key) = self.keys.remove(&id) else {
            return;
        };
        if let Some(ids) = self.by_key.get_mut(&key) {
            ids.retain(|&b| b != id);
            if ids.is_empty() {
                self.by_key.remove(&key);
            }
        }
    }

    fn route(&mut self, msg: &Message, out: &mut Vec<BindingId>) {
        // Only fetch the body from the host when it can go somewhere.
        if self.by_key.is_empty() {
            return;
        }
        let key = match self.check(&msg.body()) {
            Ok(()) if msg.routing_key() == self.rejects_key => return,
            Ok(()) => msg.routing_key(),
            Err(why) => {
                // Debug: one line per rejected message would flood the log at Info.
                broker_plugin_sdk::log(
                    LogLevel::Debug,
                    &format!("{}: rejected `{}`: {why}", self.name, msg.routing_key()),
                );
                &self.rejects_key
            }
        };
        if let Some(ids) = self.by_key.get(key) {
            out.extend_from_slice(ids);
        }
    }
}

broker_plugin_sdk::export_exchange!(SchemaGate);

#[cfg(test)]
mod tests;
