//! Not hostile: routes on the body (fetched from the host) and a property, to test that
//! both reach the plugin. A message goes to the bindings whose key equals its body text,
//! unless its content type is `application/x-skip`. With routing key `greedy` it fetches
//! the body forever (which the host must stop).

use broker_plugin_sdk::Message;

common::hostile_plugin!(|keyed, msg, out| {
    if msg.routing_key() == "greedy" {
        loop {
            std::hint::black_box(msg.body());
        }
    }
    if msg.properties().content_type.as_deref() == Some("application/x-skip") {
        return;
    }
    let body = msg.body();
    assert_eq!(body.len() as u64, msg.body_size());
    let key = String::from_utf8_lossy(&body);
    keyed.route(&Message::new(key.as_ref()), out);
});
