//! A handler that loops forever on every message: deploy validation must refuse it.

use broker_plugin_sdk::{Context, Message, Outcome};

fn handle(_: &Message, _: &mut Context) -> Outcome {
    loop {
        std::hint::black_box(());
    }
}

broker_plugin_sdk::export_handler!(handle);
