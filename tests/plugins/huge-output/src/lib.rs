//! Returns a million ids (one bound id repeated) when the routing key is `huge`.

common::hostile_plugin!(|keyed, msg, out| {
    if msg.routing_key() == "huge" {
        if let Some(id) = keyed.any_binding() {
            out.reserve_exact(1_000_000);
            out.extend(std::iter::repeat_n(id, 1_000_000));
        }
        return;
    }
    keyed.route(msg, out);
});
