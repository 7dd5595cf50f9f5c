// The handler's name, quoted by mistake.
broker_plugin_sdk::export_handler!("handle");

fn main() {}
