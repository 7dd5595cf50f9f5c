//! `flaky`: fails the first deliveries of every message, then succeeds — to watch retries,
//! backoff and the dead-letter queue at work.
//!
//! Config: `failures` (default 2): deliveries that fail before one succeeds; `fail_with`
//! (default `retry`): how they fail — `retry` (the queue's backoff), `reject` (dead-letter
//! at once) or `trap` (a plugin crash: a failed delivery with reason `plugin_error`).

use broker_plugin_sdk::{Config, Context, LogLevel, Message, Outcome};

fn failures(config: &Config) -> Result<u32, String> {
    match config.get("failures") {
        None => Ok(2),
        Some(n) => n
            .parse()
            .map_err(|_| format!("`failures` must be a number, not `{n}`")),
    }
}

pub fn init(_queue: &str, config: &Config) -> Result<(), String> {
    failures(config)?;
    match config.get("fail_with") {
        None | Some("retry" | "reject" | "trap") => Ok(()),
        Some(other) => Err(format!(
            "`fail_with` must be retry, reject or trap, not `{other}`"
        )),
    }
}

pub fn handle(msg: &Message, ctx: &mut Context) -> Outcome {
    let failures = failures(ctx.config_all()).unwrap_or(2);
    let attempt = ctx.delivery_count();
    if attempt > failures {
        if failures > 0 {
            let line = format!("{} succeeded on attempt {attempt}", msg.routing_key());
            ctx.log(LogLevel::Info, &line);
        }
        return Outcome::Ack;
    }
    let line = format!(
        "{} failing attempt {attempt} of {failures}",
        msg.routing_key()
    );
    ctx.log(LogLevel::Warn, &line);
    match ctx.config("fail_with") {
        Some("reject") => Outcome::reject(format!("attempt {attempt} rejected")),
        Some("trap") => panic!("flaky handler crashed on attempt {attempt}"),
        _ => Outcome::retry(),
    }
}

broker_plugin_sdk::export_handler!(handle, init = init);

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(n: u32, config: Config) -> Outcome {
        let mut ctx = Context::new("q").with_config(config).with_delivery_count(n);
        handle(&Message::new("job"), &mut ctx)
    }

    #[test]
    fn fails_the_first_attempts_then_acks() {
        let two = || Config::new();
        assert_eq!(attempt(1, two()), Outcome::retry());
        assert_eq!(attempt(2, two()), Outcome::retry());
        assert_eq!(attempt(3, two()), Outcome::Ack);
        let none = || Config::new().with("failures", "0");
        assert_eq!(attempt(1, none()), Outcome::Ack);
        let reject = Config::new().with("fail_with", "reject");
        assert!(matches!(attempt(1, reject), Outcome::Reject(_)));
    }

    #[test]
    #[should_panic(expected = "crashed on attempt 1")]
    fn trap_mode_panics() {
        attempt(1, Config::new().with("fail_with", "trap"));
    }

    #[test]
    fn config_is_checked() {
        assert!(init("q", &Config::new().with("failures", "x")).is_err());
        assert!(init("q", &Config::new().with("fail_with", "explode")).is_err());
        assert!(init("q", &Config::new().with("failures", "5")).is_ok());
    }
}
