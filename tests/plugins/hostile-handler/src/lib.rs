//! A handler that misbehaves on command: routing key `spin` loops forever, `alloc` grows
//! memory until refused, `flood` publishes more than a call may; anything else is acked.

use broker_plugin_sdk::{Context, Message, Outcome};

fn handle(msg: &Message, ctx: &mut Context) -> Outcome {
    match msg.routing_key() {
        "spin" => loop {
            std::hint::black_box(());
        },
        "alloc" => {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(Vec::with_capacity(1 << 20));
                std::hint::black_box(&hoard);
            }
        }
        "flood" => {
            for _ in 0..1000 {
                if let Err(e) = ctx.publish("", "out", Message::new("out")) {
                    return Outcome::Reject(e);
                }
            }
            Outcome::Ack
        }
        _ => Outcome::Ack,
    }
}

broker_plugin_sdk::export_handler!(handle);
