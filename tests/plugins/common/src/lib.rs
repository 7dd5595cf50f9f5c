//! A direct-exchange matcher the hostile plugins use for their well-behaved routes, so a
//! test can tell a restarted instance (bindings replayed) from a broken one.

use std::collections::HashMap;

use broker_plugin_sdk::{BindingId, Message};

#[derive(Default)]
pub struct Keyed {
    bindings: HashMap<BindingId, String>,
}

impl Keyed {
    pub fn bind(&mut self, id: BindingId, key: &str) {
        self.bindings.insert(id, key.to_owned());
    }

    pub fn unbind(&mut self, id: BindingId) {
        self.bindings.remove(&id);
    }

    pub fn route(&self, msg: &Message, out: &mut Vec<BindingId>) {
        out.extend(
            self.bindings
                .iter()
                .filter(|(_, key)| *key == msg.routing_key())
                .map(|(id, _)| *id),
        );
    }

    pub fn any_binding(&self) -> Option<BindingId> {
        self.bindings.keys().next().copied()
    }
}

/// Defines and exports a plugin that behaves like a direct exchange (bindings kept in
/// `Keyed`) except for its `route`, given as `|keyed, msg, out| { ... }`.
#[macro_export]
macro_rules! hostile_plugin {
    (|$keyed:ident, $msg:ident, $out:ident| $route:block) => {
        #[derive(Default)]
        pub struct Hostile {
            keyed: $crate::Keyed,
        }

        impl broker_plugin_sdk::Exchange for Hostile {
            fn capabilities() -> broker_plugin_sdk::Capabilities {
                // Not key-only, so the host's key cache cannot hide repeated failures.
                broker_plugin_sdk::Capabilities::HEADERS
            }
            fn new(_: &str, _: &broker_plugin_sdk::Headers) -> Result<Self, String> {
                Ok(Self::default())
            }
            fn validate_binding(
                &self,
                _: &str,
                _: &broker_plugin_sdk::Headers,
            ) -> Result<(), String> {
                Ok(())
            }
            fn bind(
                &mut self,
                id: broker_plugin_sdk::BindingId,
                key: &str,
                _: &broker_plugin_sdk::Headers,
            ) -> Result<(), String> {
                self.keyed.bind(id, key);
                Ok(())
            }
            fn unbind(&mut self, id: broker_plugin_sdk::BindingId) {
                self.keyed.unbind(id);
            }
            fn route(
                &mut self,
                $msg: &broker_plugin_sdk::Message,
                $out: &mut Vec<broker_plugin_sdk::BindingId>,
            ) {
                let $keyed = &self.keyed;
                $route
            }
        }

        broker_plugin_sdk::export_exchange!(Hostile);
    };
}
