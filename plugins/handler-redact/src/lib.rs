//! `redact`: a subscription filter that masks fields of JSON bodies before delivery.
//!
//! Config: `fields` (required), comma-separated paths such as `password,card.number`;
//! `mask` (default `***`). Bodies without those fields are delivered unchanged; bodies
//! that are not JSON are dropped (acked, never delivered) rather than risk a leak.

use broker_plugin_sdk::{Config, Context, LogLevel, Message, Outcome};
use serde_json::Value;

fn paths(config: &Config) -> Result<Vec<Vec<String>>, String> {
    let fields = config
        .get("fields")
        .ok_or("`fields` is required, e.g. `fields=password,card.number`")?;
    let paths: Vec<Vec<String>> = fields
        .split(',')
        .map(str::trim)
        .filter(|f| !f.is_empty())
        .map(|f| f.split('.').map(str::to_owned).collect())
        .collect();
    if paths.is_empty() || paths.iter().flatten().any(String::is_empty) {
        return Err(format!("`fields` has an empty path: `{fields}`"));
    }
    Ok(paths)
}

pub fn init(_queue: &str, config: &Config) -> Result<(), String> {
    paths(config).map(drop)
}

/// Masks the value at `path` in `value`; returns whether it was there.
fn mask(value: &mut Value, path: &[String], with: &str) -> bool {
    let Some((first, rest)) = path.split_first() else {
        return false;
    };
    let Some(child) = value.as_object_mut().and_then(|o| o.get_mut(first)) else {
        return false;
    };
    if rest.is_empty() {
        *child = Value::String(with.to_owned());
        true
    } else {
        mask(child, rest, with)
    }
}

pub fn handle(msg: &Message, ctx: &mut Context) -> Outcome {
    let Ok(paths) = paths(ctx.config_all()) else {
        return Outcome::reject("redact is not configured");
    };
    let mut body: Value = match serde_json::from_slice(&msg.body()) {
        Ok(body) => body,
        Err(_) => {
            ctx.log(LogLevel::Warn, "dropped a message whose body is not JSON");
            return Outcome::Drop;
        }
    };
    let with = ctx.config("mask").unwrap_or("***").to_owned();
    let mut changed = false;
    for path in &paths {
        changed |= mask(&mut body, path, &with);
    }
    if !changed {
        return Outcome::Ack;
    }
    Outcome::Deliver(msg.clone().with_body(body.to_string()))
}

broker_plugin_sdk::export_handler!(handle, init = init);

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(body: &str, fields: &str) -> Outcome {
        let mut ctx = Context::new("q").with_config(Config::new().with("fields", fields));
        handle(&Message::new("k").with_body(body), &mut ctx)
    }

    #[test]
    fn masks_configured_fields_at_any_depth() {
        let out = filter(
            r#"{"user":"a","password":"hunter2","card":{"number":"4111","exp":"12/30"}}"#,
            "password, card.number, missing.path",
        );
        let Outcome::Deliver(m) = out else {
            panic!("expected a modified message, got {out:?}");
        };
        let body: Value = serde_json::from_slice(&m.body()).unwrap();
        assert_eq!(body["password"], "***");
        assert_eq!(body["card"]["number"], "***");
        assert_eq!(body["card"]["exp"], "12/30");
        assert_eq!(body["user"], "a");
        assert_eq!(m.routing_key(), "k");
    }

    #[test]
    fn untouched_bodies_pass_and_non_json_is_dropped() {
        assert_eq!(filter(r#"{"user":"a"}"#, "password"), Outcome::Ack);
        assert_eq!(filter("plain text", "password"), Outcome::Drop);
        assert_eq!(filter(r#"["password"]"#, "password"), Outcome::Ack);
    }

    #[test]
    fn fields_are_required() {
        assert!(init("q", &Config::new()).is_err());
        assert!(init("q", &Config::new().with("fields", "a..b")).is_err());
        assert!(init("q", &Config::new().with("fields", "a.b")).is_ok());
    }
}
