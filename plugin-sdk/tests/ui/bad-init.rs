use broker_plugin_sdk::{Context, Message, Outcome};

fn handle(_msg: &Message, _ctx: &mut Context) -> Outcome {
    Outcome::Ack
}

// An init must return Result<(), String>.
fn init(_queue: &str) -> bool {
    true
}

broker_plugin_sdk::export_handler!(handle, init = init);

fn main() {}
