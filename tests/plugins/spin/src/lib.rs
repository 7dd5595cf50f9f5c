//! Loops forever when the routing key is `spin`.

use broker_plugin_sdk::{BindingId, Exchange, Message};
use common::Keyed;

#[derive(Default)]
pub struct Hostile {
    keyed: Keyed,
}

impl Exchange for Hostile {
    common::keyed_exchange!();

    fn route(&mut self, msg: &Message, out: &mut Vec<BindingId>) {
        if msg.routing_key() == "spin" {
            loop {
                std::hint::black_box(());
            }
        }
        self.keyed.route(msg, out);
    }
}

broker_plugin_sdk::export_exchange!(Hostile);
