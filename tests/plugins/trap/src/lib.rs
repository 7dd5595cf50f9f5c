//! Panics (a Wasm trap) when the routing key is `boom`.

use broker_plugin_sdk::{BindingId, Exchange, Message};
use common::Keyed;

#[derive(Default)]
pub struct Hostile {
    keyed: Keyed,
}

impl Exchange for Hostile {
    common::keyed_exchange!();

    fn route(&mut self, msg: &Message, out: &mut Vec<BindingId>) {
        if msg.routing_key() == "boom" {
            panic!("boom");
        }
        self.keyed.route(msg, out);
    }
}

broker_plugin_sdk::export_exchange!(Hostile);
