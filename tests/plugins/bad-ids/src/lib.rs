//! Routes to a binding id that was never bound when the routing key is `bad`.

common::hostile_plugin!(|keyed, msg, out| {
    if msg.routing_key() == "bad" {
        out.push(424_242);
        return;
    }
    keyed.route(msg, out);
});
