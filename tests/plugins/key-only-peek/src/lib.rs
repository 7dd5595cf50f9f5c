//! Not hostile, but wrong: declares `Capabilities::KEY_ONLY` and, for routing key `peek`
//! only (no deploy sample uses it), routes on the body: to the bindings whose key is the
//! body text. The host hands a key-only plugin no body, so `peek` routes as an empty body.

use broker_plugin_sdk::{BindingId, Capabilities, Exchange, Headers, Message};
use common::Keyed;

#[derive(Default)]
pub struct Peek {
    keyed: Keyed,
}

impl Exchange for Peek {
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
        if msg.routing_key() == "peek" {
            let body = String::from_utf8_lossy(&msg.body()).into_owned();
            self.keyed.route(&Message::new(body), out);
        } else {
            self.keyed.route(msg, out);
        }
    }
}

broker_plugin_sdk::export_exchange!(Peek);
