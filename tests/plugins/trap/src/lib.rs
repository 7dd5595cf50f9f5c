//! Panics (a Wasm trap) when the routing key is `boom`.

common::hostile_plugin!(|keyed, msg, out| {
    if msg.routing_key() == "boom" {
        panic!("boom");
    }
    keyed.route(msg, out);
});
