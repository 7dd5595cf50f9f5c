//! Loops forever when the routing key is `spin`.

common::hostile_plugin!(|keyed, msg, out| {
    if msg.routing_key() == "spin" {
        loop {
            std::hint::black_box(());
        }
    }
    keyed.route(msg, out);
});
