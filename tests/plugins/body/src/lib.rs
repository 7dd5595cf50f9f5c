//! Not hostile: routes on the body (fetched from the host) and a property, to test that
//! both reach the plugin. A message goes to the bindings whose key equals its body text,
//! unless its content type is `application/x-skip`.

use broker_plugin_sdk::{BindingId, Exchange, Message};
use common::Keyed;

#[derive(Default)]
pub struct Hostile {
    keyed: Keyed,
}

impl Exchange for Hostile {
    common::keyed_exchange!();

    fn route(&mut self, msg: &Message, out: &mut Vec<BindingId>) {
        if msg.properties().content_type.as_deref() == Some("application/x-skip") {
            return;
        }
        let body = msg.body();
        assert_eq!(body.len() as u64, msg.body_size());
        let key = String::from_utf8_lossy(&body);
        self.keyed.route(&Message::new(key.as_ref()), out);
    }
}

broker_plugin_sdk::export_exchange!(Hostile);
