//! `enrich`: publishes a derived event for each message — the JSON body plus where it came
//! from — to the configured `exchange` (required) with `routing_key` (default: the
//! message's key + `.enriched`). The derived event and the ack commit together.

use broker_plugin_sdk::{Config, Context, Message, Outcome, Properties};

pub fn init(_queue: &str, config: &Config) -> Result<(), String> {
    match config.get("exchange") {
        Some(_) => Ok(()),
        None => Err("`exchange` is required: where to publish the derived events".into()),
    }
}

pub fn handle(msg: &Message, ctx: &mut Context) -> Outcome {
    let mut event = match serde_json::from_slice::<serde_json::Value>(&msg.body()) {
        Ok(serde_json::Value::Object(map)) => map,
        Ok(_) | Err(_) => return Outcome::reject("body is not a JSON object"),
    };
    event.insert("source_queue".into(), ctx.queue().into());
    event.insert("source_routing_key".into(), msg.routing_key().into());
    event.insert("enriched".into(), true.into());
    let exchange = ctx.config("exchange").unwrap_or_default().to_owned();
    let key = match ctx.config("routing_key") {
        Some(key) => key.to_owned(),
        None => format!("{}.enriched", msg.routing_key()),
    };
    let properties = Properties {
        persistent: msg.properties().persistent,
        content_type: Some("application/json".into()),
        correlation_id: msg.properties().message_id.clone(),
        ..Default::default()
    };
    let derived = Message::new(key.clone())
        .with_properties(properties)
        .with_body(serde_json::Value::Object(event).to_string());
    match ctx.publish(&exchange, &key, derived) {
        Ok(()) => Outcome::Ack,
        Err(e) => Outcome::Reject(format!("cannot publish the derived event: {e}")),
    }
}

broker_plugin_sdk::export_handler!(handle, init = init);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publishes_a_derived_event() {
        let mut ctx = Context::new("orders").with_config(Config::new().with("exchange", "derived"));
        let order = Message::new("order.created").with_body(r#"{"id":7}"#);
        assert_eq!(handle(&order, &mut ctx), Outcome::Ack);
        let out = &ctx.published()[0];
        assert_eq!(out.exchange, "derived");
        assert_eq!(out.routing_key, "order.created.enriched");
        let body: serde_json::Value = serde_json::from_slice(&out.message.body()).unwrap();
        assert_eq!(body["id"], 7);
        assert_eq!(body["source_queue"], "orders");
    }

    #[test]
    fn needs_an_exchange_and_an_object() {
        assert!(init("q", &Config::new()).is_err());
        let mut ctx = Context::new("q").with_config(Config::new().with("exchange", "x"));
        let list = Message::new("k").with_body("[1]");
        assert!(matches!(handle(&list, &mut ctx), Outcome::Reject(_)));
        assert!(ctx.published().is_empty());
    }
}
