//! A key-only direct exchange that matches the routing key upper-cased: with bindings
//! `k` and `K`, `direct` routes key `k` to the first and this plugin to the second, so a
//! test can tell which version routed a message (shadow and canary deploys).

use broker_plugin_sdk::{BindingId, Capabilities, Exchange, Headers, Message};

#[derive(Default)]
pub struct UpperKey {
    keyed: common::Keyed,
}

impl Exchange for UpperKey {
    fn capabilities() -> Capabilities {
        Capabilities::KEY_ONLY
    }

    fn new(_: &str, _: &Headers) -> Result<Self, String> {
        Ok(Self::default())
    }

    fn validate_binding(&self, _: &str, _: &Headers) -> Result<(), String> {
        Ok(())
    }

    fn bind(&mut self, id: BindingId, key: &str, _: &Headers) -> Result<(), String> {
        self.keyed.bind(id, key);
        Ok(())
    }

    fn unbind(&mut self, id: BindingId) {
        self.keyed.unbind(id);
    }

    fn route(&mut self, msg: &Message, out: &mut Vec<BindingId>) {
        let upper = msg.routing_key().to_uppercase();
        self.keyed.route(&Message::new(&upper), out);
    }
}

broker_plugin_sdk::export_exchange!(UpperKey);
