//! A well-behaved exchange built against a future ABI (`broker:plugin@2.0.0`): the host
//! must refuse it at load time with a clear error.

wit_bindgen::generate!({ path: "wit", world: "exchange-plugin" });

use exports::broker::plugin::exchange::{Capabilities, Guest, Header, Message, PluginKind};

struct WrongAbi;

impl Guest for WrongAbi {
    fn get_capabilities() -> Capabilities {
        Capabilities {
            kind: PluginKind::Exchange,
            key_only: true,
            reads_headers: false,
            reads_body: false,
        }
    }
    fn init(_: String, _: Vec<Header>) -> Result<(), String> {
        Ok(())
    }
    fn validate_binding(_: String, _: Vec<Header>) -> Result<(), String> {
        Ok(())
    }
    fn bind(_: u64, _: String, _: Vec<Header>) -> Result<(), String> {
        Ok(())
    }
    fn unbind(_: u64) {}
    fn route(_: Message) -> Vec<u64> {
        Vec::new()
    }
    fn route_batch(msgs: Vec<Message>) -> Vec<Vec<u64>> {
        msgs.iter().map(|_| Vec::new()).collect()
    }
}

export!(WrongAbi);
