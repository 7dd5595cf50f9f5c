//! The `direct` exchange: a message goes to the bindings whose key equals its routing key.

use std::collections::HashMap;

use broker_plugin_sdk::{BindingId, Capabilities, Exchange, Headers, Message};

#[derive(Default)]
pub struct Direct {
    by_key: HashMap<String, Vec<BindingId>>,
    keys: HashMap<BindingId, String>,
}

impl Exchange for Direct {
    fn capabilities() -> Capabilities {
        Capabilities::KEY_ONLY
    }

    fn new(_exchange: &str, _arguments: &Headers) -> Result<Self, String> {
        Ok(Direct::default())
    }

    fn validate_binding(&self, _key: &str, _arguments: &Headers) -> Result<(), String> {
        Ok(())
    }

    fn bind(&mut self, id: BindingId, key: &str, _arguments: &Headers) -> Result<(), String> {
        self.unbind(id);
        self.by_key.entry(key.to_owned()).or_default().push(id);
        self.keys.insert(id, key.to_owned());
        Ok(())
    }

    fn unbind(&mut self, id: BindingId) {
        let Some(key) = self.keys.remove(&id) else {
            return;
        };
        if let Some(ids) = self.by_key.get_mut(&key) {
            ids.retain(|&b| b != id);
            if ids.is_empty() {
                self.by_key.remove(&key);
            }
        }
    }

    fn route(&mut self, msg: &Message, out: &mut Vec<BindingId>) {
        if let Some(ids) = self.by_key.get(msg.routing_key()) {
            out.extend_from_slice(ids);
        }
    }
}

broker_plugin_sdk::export_exchange!(Direct);

#[cfg(test)]
mod tests {
    use super::*;

    fn routed(ex: &mut Direct, key: &str) -> Vec<BindingId> {
        let mut out = Vec::new();
        ex.route(&Message::new(key), &mut out);
        out.sort_unstable();
        out
    }

    #[test]
    fn exact_key_match_only() {
        let mut ex = Direct::new("d", &Headers::new()).unwrap();
        let none = Headers::new();
        ex.bind(1, "a", &none).unwrap();
        ex.bind(2, "a", &none).unwrap();
        ex.bind(3, "b", &none).unwrap();
        ex.bind(4, "", &none).unwrap();
        let table: &[(&str, &[BindingId])] = &[
            ("a", &[1, 2]),
            ("b", &[3]),
            ("", &[4]),
            ("A", &[]),
            ("a.b", &[]),
            ("*", &[]),
            ("#", &[]),
        ];
        for (key, want) in table {
            assert_eq!(routed(&mut ex, key), *want, "key {key:?}");
        }
    }

    #[test]
    fn unbind_and_rebind() {
        let mut ex = Direct::new("d", &Headers::new()).unwrap();
        let none = Headers::new();
        ex.bind(1, "a", &none).unwrap();
        ex.bind(1, "b", &none).unwrap();
        assert_eq!(routed(&mut ex, "a"), Vec::<BindingId>::new());
        assert_eq!(routed(&mut ex, "b"), vec![1]);
        ex.unbind(1);
        ex.unbind(1);
        assert_eq!(routed(&mut ex, "b"), Vec::<BindingId>::new());
        assert!(ex.by_key.is_empty() && ex.keys.is_empty());
    }
}
