//! Allocates until memory runs out when the routing key is `alloc`.

common::hostile_plugin!(|keyed, msg, out| {
    if msg.routing_key() == "alloc" {
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        loop {
            // Reserve without touching: growth, not fuel, is what runs out.
            hoard.push(Vec::with_capacity(1 << 20));
            std::hint::black_box(&hoard);
        }
    }
    keyed.route(msg, out);
});
