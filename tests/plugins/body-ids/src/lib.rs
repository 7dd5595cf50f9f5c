//! With routing key `fuzz`, routes to whatever binding ids the message body spells
//! (little-endian u64s, the last one padded with zeros), and panics when the body starts
//! with `!`: the fuzz target for the plugin boundary drives the host's output checks with
//! it (tests/fuzz.rs). Other keys route as a direct exchange (deploy validation's samples).

common::hostile_plugin!(|keyed, msg, out| {
    if msg.routing_key() != "fuzz" {
        keyed.route(msg, out);
        return;
    }
    let body = msg.body();
    if body.first() == Some(&b'!') {
        panic!("the body asked for a panic");
    }
    for chunk in body.chunks(8) {
        let mut id = [0u8; 8];
        id[..chunk.len()].copy_from_slice(chunk);
        out.push(u64::from_le_bytes(id));
    }
});
