//! The `json-router` exchange: content-based routing on the JSON body. Each binding has an
//! argument `match` holding an expression (see [`expr`]), e.g.
//! `amount > 100 && country == "DE"` or `order.status in ["paid", "shipped"]`; a message
//! goes to every binding whose expression its body satisfies. Expressions are parsed when
//! the binding is made, so a bad one is refused then. A body that is not JSON matches no
//! binding. The binding key and the routing key are ignored.

pub mod expr;

use std::collections::BTreeMap;

use broker_plugin_sdk::{BindingId, Capabilities, Exchange, Headers, Message, Value};

use expr::Expr;

/// The binding's expression, from its `match` argument.
fn binding_expr(arguments: &Headers) -> Result<Expr, String> {
    for arg in arguments {
        if arg.name != "match" {
            return Err(format!(
                "unknown json-router binding argument `{}` (known: match)",
                arg.name
            ));
        }
    }
    match arguments.get("match") {
        Some(Value::Text(src)) => {
            expr::parse(src).map_err(|e| format!("bad match expression: {e}"))
        }
        // `--arg match=true` arrives as a JSON boolean: a constant expression.
        Some(Value::Bool(b)) => Ok(Expr::Truthy(expr::Operand::Literal((*b).into()))),
        Some(_) => Err("match must be an expression string".to_owned()),
        None => {
            Err("a json-router binding needs a `match` argument, e.g. `amount > 100`".to_owned())
        }
    }
}

#[derive(Default)]
pub struct JsonRouter {
    bindings: BTreeMap<BindingId, Expr>,
}

impl Exchange for JsonRouter {
    fn capabilities() -> Capabilities {
        Capabilities {
            key_only: false,
            reads_headers: false,
            reads_body: true,
        }
    }

    fn new(_exchange: &str, arguments: &Headers) -> Result<Self, String> {
        match arguments.iter().next() {
            Some(arg) => Err(format!(
                "the json-router exchange takes no arguments, got `{}`",
                arg.name
            )),
            None => Ok(JsonRouter::default()),
        }
    }

    fn validate_binding(&self, _key: &str, arguments: &Headers) -> Result<(), String> {
        binding_expr(arguments).map(|_| ())
    }

    fn bind(&mut self, id: BindingId, _key: &str, arguments: &Headers) -> Result<(), String> {
        self.bindings.insert(id, binding_expr(arguments)?);
        Ok(())
    }

    fn unbind(&mut self, id: BindingId) {
        self.bindings.remove(&id);
    }

    fn route(&mut self, msg: &Message, out: &mut Vec<BindingId>) {
        // Only fetch the body from the host when something could match it.
        if self.bindings.is_empty() {
            return;
        }
        let Ok(doc) = serde_json::from_slice::<serde_json::Value>(&msg.body()) else {
            return;
        };
        out.extend(
            self.bindings
                .iter()
                .filter(|(_, e)| e.eval(&doc))
                .map(|(&id, _)| id),
        );
    }
}

broker_plugin_sdk::export_exchange!(JsonRouter);

#[cfg(test)]
mod tests;
