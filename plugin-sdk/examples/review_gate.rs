//! `review-gate`: orders whose `amount` header is over `limit` (config, default 1000) are
//! copied to the `orders.review` queue; every order is acked.

use broker_plugin_sdk::{Config, Context, LogLevel, Message, Outcome, Value};

/// Runs once per instance: a bad `limit` refuses the attachment with this message.
pub fn init(_queue: &str, config: &Config) -> Result<(), String> {
    limit(config).map(drop)
}

fn limit(config: &Config) -> Result<f64, String> {
    let limit = config.get("limit").unwrap_or("1000");
    limit
        .parse()
        .map_err(|_| format!("`limit` must be a number, not `{limit}`"))
}

pub fn handle(msg: &Message, ctx: &mut Context) -> Outcome {
    let Some(amount) = msg.header("amount").and_then(Value::as_f64) else {
        return Outcome::reject("order without an `amount` header");
    };
    let limit = limit(ctx.config_all()).unwrap_or(1000.0);
    if amount > limit {
        ctx.log(LogLevel::Info, &format!("order of {amount} needs a review"));
        // Stored in the same commit as this message's ack.
        if let Err(e) = ctx.publish("", "orders.review", msg.clone()) {
            return Outcome::Reject(e);
        }
    }
    Outcome::Ack
}

broker_plugin_sdk::export_handler!(handle, init = init);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_orders_go_to_review() {
        let mut ctx = Context::new("orders").with_config(Config::new().with("limit", "500"));
        let big = Message::new("order.created").with_header("amount", 900i64);
        assert_eq!(handle(&big, &mut ctx), Outcome::Ack);
        assert_eq!(ctx.published()[0].routing_key, "orders.review");

        let mut ctx = Context::new("orders");
        let small = Message::new("order.created").with_header("amount", 20.5);
        assert_eq!(handle(&small, &mut ctx), Outcome::Ack);
        assert!(ctx.published().is_empty());
    }

    #[test]
    fn bad_input_is_refused() {
        assert!(init("orders", &Config::new().with("limit", "lots")).is_err());
        let mut ctx = Context::new("orders");
        let blank = Message::new("order.created");
        assert!(matches!(handle(&blank, &mut ctx), Outcome::Reject(_)));
    }
}
