//! Allocates until memory runs out when the routing key is `alloc`.

use broker_plugin_sdk::{BindingId, Exchange, Message};
use common::Keyed;

#[derive(Default)]
pub struct Hostile {
    keyed: Keyed,
}

impl Exchange for Hostile {
    common::keyed_exchange!();

    fn route(&mut self, msg: &Message, out: &mut Vec<BindingId>) {
        if msg.routing_key() == "alloc" {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                // Reserve without touching: growth, not fuel, is what runs out.
                hoard.push(Vec::with_capacity(1 << 20));
                std::hint::black_box(&hoard);
            }
        }
        self.keyed.route(msg, out);
    }
}

broker_plugin_sdk::export_exchange!(Hostile);
