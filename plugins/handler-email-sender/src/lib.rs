//! `email-sender`: the welcome-email service of a `user_events` fan-out, as a plugin. For
//! each `user.signup` event (a JSON body with `user` and optionally `email`) it "sends" a
//! welcome email — here, a log line — and acks; other events are acked untouched.

use broker_plugin_sdk::{Context, LogLevel, Message, Outcome};

pub fn handle(msg: &Message, ctx: &mut Context) -> Outcome {
    if msg.routing_key() != "user.signup" {
        return Outcome::Ack;
    }
    let event: serde_json::Value = match serde_json::from_slice(&msg.body()) {
        Ok(event) => event,
        Err(e) => return Outcome::reject(format!("signup event is not JSON: {e}")),
    };
    let Some(user) = event["user"].as_str() else {
        return Outcome::reject("signup event has no `user`");
    };
    let to = event["email"].as_str().unwrap_or(user);
    ctx.log(LogLevel::Info, &format!("sending welcome email to {to}"));
    Outcome::Ack
}

broker_plugin_sdk::export_handler!(handle);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn welcomes_signups_only() {
        let mut ctx = Context::new("email");
        let signup = Message::new("user.signup")
            .with_body(r#"{"user":"alice","email":"alice@example.com"}"#);
        assert_eq!(handle(&signup, &mut ctx), Outcome::Ack);
        assert_eq!(
            ctx.logs(),
            [(
                LogLevel::Info,
                "sending welcome email to alice@example.com".to_owned()
            )]
        );

        let mut ctx = Context::new("email");
        let login = Message::new("user.login").with_body(r#"{"user":"alice"}"#);
        assert_eq!(handle(&login, &mut ctx), Outcome::Ack);
        assert!(ctx.logs().is_empty());
    }

    #[test]
    fn rejects_malformed_signups() {
        let mut ctx = Context::new("email");
        let bad = Message::new("user.signup").with_body("not json");
        assert!(matches!(handle(&bad, &mut ctx), Outcome::Reject(_)));
        let anonymous = Message::new("user.signup").with_body("{}");
        assert!(matches!(handle(&anonymous, &mut ctx), Outcome::Reject(_)));
    }
}
