use broker_plugin_sdk::{Config, Context, Message, Outcome};

fn handle(_msg: &Message, _ctx: &mut Context) -> Outcome {
    Outcome::Ack
}

fn init(_queue: &str, config: &Config) -> Result<(), String> {
    config.get("key").map(drop).ok_or_else(|| "key is required".to_owned())
}

broker_plugin_sdk::export_handler!(handle, init = init);

fn main() {}
