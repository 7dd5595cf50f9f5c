//! `loyalty`: awards points for `user_events`. Each `user.signup` earns `signup_points`
//! (config, default 100); the award is logged and, when `exchange` is configured,
//! published there as a `loyalty.points` event (committed together with the ack).

use broker_plugin_sdk::{Config, Context, LogLevel, Message, Outcome, Properties};

fn points(config: &Config) -> Result<u64, String> {
    match config.get("signup_points") {
        None => Ok(100),
        Some(n) => n
            .parse()
            .map_err(|_| format!("`signup_points` must be a number, not `{n}`")),
    }
}

pub fn init(_queue: &str, config: &Config) -> Result<(), String> {
    points(config).map(drop)
}

pub fn handle(msg: &Message, ctx: &mut Context) -> Outcome {
    if msg.routing_key() != "user.signup" {
        return Outcome::Ack;
    }
    let Ok(event) = serde_json::from_slice::<serde_json::Value>(&msg.body()) else {
        return Outcome::reject("signup event is not JSON");
    };
    let Some(user) = event["user"].as_str() else {
        return Outcome::reject("signup event has no `user`");
    };
    let points = points(ctx.config_all()).unwrap_or(100);
    ctx.log(
        LogLevel::Info,
        &format!("awarded {points} points to {user}"),
    );
    if let Some(exchange) = ctx.config("exchange").map(str::to_owned) {
        let award = serde_json::json!({ "user": user, "points": points, "reason": "signup" });
        let properties = Properties {
            persistent: msg.properties().persistent,
            content_type: Some("application/json".into()),
            ..Default::default()
        };
        let message = Message::new("loyalty.points")
            .with_properties(properties)
            .with_body(award.to_string());
        if let Err(e) = ctx.publish(&exchange, "loyalty.points", message) {
            return Outcome::Reject(format!("cannot publish the award: {e}"));
        }
    }
    Outcome::Ack
}

broker_plugin_sdk::export_handler!(handle, init = init);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn awards_and_publishes() {
        let config = Config::new()
            .with("signup_points", "50")
            .with("exchange", "rewards");
        let mut ctx = Context::new("loyalty").with_config(config);
        let signup = Message::new("user.signup").with_body(r#"{"user":"bob"}"#);
        assert_eq!(handle(&signup, &mut ctx), Outcome::Ack);
        assert_eq!(ctx.logs()[0].1, "awarded 50 points to bob");
        let award = &ctx.published()[0];
        assert_eq!(
            (award.exchange.as_str(), award.routing_key.as_str()),
            ("rewards", "loyalty.points")
        );
        let body: serde_json::Value = serde_json::from_slice(&award.message.body()).unwrap();
        assert_eq!(body["points"], 50);
        assert_eq!(body["user"], "bob");
    }

    #[test]
    fn without_an_exchange_it_only_logs() {
        let mut ctx = Context::new("loyalty");
        let signup = Message::new("user.signup").with_body(r#"{"user":"bob"}"#);
        assert_eq!(handle(&signup, &mut ctx), Outcome::Ack);
        assert!(ctx.published().is_empty());
        assert_eq!(ctx.logs()[0].1, "awarded 100 points to bob");
        assert!(init("q", &Config::new().with("signup_points", "many")).is_err());
    }
}
