//! Returns a million ids (one bound id repeated) when the routing key is `huge`.

use broker_plugin_sdk::{BindingId, Exchange, Message};
use common::Keyed;

#[derive(Default)]
pub struct Hostile {
    keyed: Keyed,
}

impl Exchange for Hostile {
    common::keyed_exchange!();

    fn route(&mut self, msg: &Message, out: &mut Vec<BindingId>) {
        if msg.routing_key() == "huge" {
            if let Some(id) = self.keyed.any_binding() {
                out.reserve_exact(1_000_000);
                out.extend(std::iter::repeat_n(id, 1_000_000));
            }
            return;
        }
        self.keyed.route(msg, out);
    }
}

broker_plugin_sdk::export_exchange!(Hostile);
