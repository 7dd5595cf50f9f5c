use broker_plugin_sdk::{Message, Outcome};

// Forgot the context, and returns a bool.
fn handle(msg: &Message) -> bool {
    msg.body_size() > 0
}

broker_plugin_sdk::export_handler!(handle);

fn main() {
    let _ = Outcome::Ack;
}
