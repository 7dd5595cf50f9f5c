//! The `fanout` exchange: every message goes to every binding; keys are ignored.

use std::collections::BTreeSet;

use broker_plugin_sdk::{BindingId, Capabilities, Exchange, Headers, Message};

#[derive(Default)]
pub struct Fanout {
    bindings: BTreeSet<BindingId>,
}

impl Exchange for Fanout {
    fn capabilities() -> Capabilities {
        // The key does not matter at all, so a key cache trivially holds.
        Capabilities::KEY_ONLY
    }

    fn new(_exchange: &str, _arguments: &Headers) -> Result<Self, String> {
        Ok(Fanout::default())
    }

    fn validate_binding(&self, _key: &str, _arguments: &Headers) -> Result<(), String> {
        Ok(())
    }

    fn bind(&mut self, id: BindingId, _key: &str, _arguments: &Headers) -> Result<(), String> {
        self.bindings.insert(id);
        Ok(())
    }

    fn unbind(&mut self, id: BindingId) {
        self.bindings.remove(&id);
    }

    fn route(&mut self, _msg: &Message, out: &mut Vec<BindingId>) {
        out.extend(self.bindings.iter().copied());
    }
}

broker_plugin_sdk::export_exchange!(Fanout);

#[cfg(test)]
mod tests {
    use super::*;

    fn routed(ex: &mut Fanout, key: &str) -> Vec<BindingId> {
        let mut out = Vec::new();
        ex.route(&Message::new(key), &mut out);
        out
    }

    #[test]
    fn every_binding_gets_every_message() {
        let mut ex = Fanout::new("f", &Headers::new()).unwrap();
        assert_eq!(routed(&mut ex, "x"), Vec::<BindingId>::new());
        let none = Headers::new();
        ex.bind(7, "ignored", &none).unwrap();
        ex.bind(3, "", &none).unwrap();
        ex.bind(7, "again", &none).unwrap();
        for key in ["", "x", "a.b.c", "#"] {
            assert_eq!(routed(&mut ex, key), vec![3, 7], "key {key:?}");
        }
        ex.unbind(3);
        assert_eq!(routed(&mut ex, "x"), vec![7]);
    }
}
