//! Panics on every message: deploy validation must refuse it, with the panic's text.

common::hostile_plugin!(|keyed, msg, out| {
    let _ = (keyed, out);
    panic!("no route for {}", msg.routing_key());
});
