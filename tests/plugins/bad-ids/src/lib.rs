//! Routes to a binding id that was never bound when the routing key is `bad`.

use broker_plugin_sdk::{BindingId, Exchange, Message};
use common::Keyed;

#[derive(Default)]
pub struct Hostile {
    keyed: Keyed,
}

impl Exchange for Hostile {
    common::keyed_exchange!();

    fn route(&mut self, msg: &Message, out: &mut Vec<BindingId>) {
        if msg.routing_key() == "bad" {
            out.push(424_242);
            return;
        }
        self.keyed.route(msg, out);
    }
}

broker_plugin_sdk::export_exchange!(Hostile);
