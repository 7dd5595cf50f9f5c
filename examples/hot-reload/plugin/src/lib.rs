//! The hot-reload demo's exchange. Bindings name a lane (`standard`, `express`); routing
//! keys look like `order.<id>.<tier>`.
//!
//! - version 1: every order goes to the `standard` lane;
//! - version 2 (`--features v2`): `vip` orders go to the `express` lane instead.

use std::collections::HashMap;

use broker_plugin_sdk::{BindingId, Capabilities, Exchange, Headers, Message};

#[derive(Default)]
pub struct OrdersRouter {
    lanes: HashMap<BindingId, String>,
}

/// The lane an order with routing key `key` belongs in.
fn lane(key: &str) -> &'static str {
    if cfg!(feature = "v2") && key.ends_with(".vip") {
        "express"
    } else {
        "standard"
    }
}

impl Exchange for OrdersRouter {
    fn capabilities() -> Capabilities {
        Capabilities::KEY_ONLY
    }

    fn new(_exchange: &str, _arguments: &Headers) -> Result<Self, String> {
        Ok(OrdersRouter::default())
    }

    fn validate_binding(&self, key: &str, _arguments: &Headers) -> Result<(), String> {
        match key {
            "standard" | "express" => Ok(()),
            other => Err(format!(
                "unknown lane `{other}`: bind `standard` or `express`"
            )),
        }
    }

    fn bind(&mut self, id: BindingId, key: &str, arguments: &Headers) -> Result<(), String> {
        self.validate_binding(key, arguments)?;
        self.lanes.insert(id, key.to_owned());
        Ok(())
    }

    fn unbind(&mut self, id: BindingId) {
        self.lanes.remove(&id);
    }

    fn route(&mut self, msg: &Message, out: &mut Vec<BindingId>) {
        let lane = lane(msg.routing_key());
        out.extend(
            self.lanes
                .iter()
                .filter(|(_, l)| l.as_str() == lane)
                .map(|(id, _)| *id),
        );
    }
}

broker_plugin_sdk::export_exchange!(OrdersRouter);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_by_lane() {
        let mut ex = OrdersRouter::new("orders", &Headers::new()).unwrap();
        ex.bind(1, "standard", &Headers::new()).unwrap();
        ex.bind(2, "express", &Headers::new()).unwrap();
        assert!(ex.bind(3, "slow", &Headers::new()).is_err());
        let mut out = Vec::new();
        ex.route(&Message::new("order.7.vip"), &mut out);
        let expected = if cfg!(feature = "v2") { 2 } else { 1 };
        assert_eq!(out, [expected]);
        out.clear();
        ex.route(&Message::new("order.8.regular"), &mut out);
        assert_eq!(out, [1]);
    }
}
