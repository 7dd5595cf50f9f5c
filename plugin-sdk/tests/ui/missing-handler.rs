broker_plugin_sdk::export_handler!();

fn main() {}
