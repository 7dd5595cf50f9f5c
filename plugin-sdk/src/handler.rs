//! Consumer-side handlers: a function the broker runs for each message of a queue.

use std::rc::Rc;

use crate::log::LogLevel;
use crate::message::Message;

/// What a handler decided about a message.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Done: the message leaves the queue. In filter mode: deliver it unchanged.
    Ack,
    /// Failed for now: redeliver it after `delay_ms`, or after the queue's `retry_backoff`
    /// when `None`. Counts against the queue's `max_deliveries`.
    Retry { delay_ms: Option<u64> },
    /// Will never work: dead-letter it now (death reason `rejected`); the reason is logged.
    Reject(String),
    /// Filter mode: do not deliver it (the broker acks it).
    Drop,
    /// Filter mode: deliver this message instead of the original.
    Deliver(Message),
}

impl Outcome {
    /// Retry after the queue's backoff.
    pub fn retry() -> Outcome {
        Outcome::Retry { delay_ms: None }
    }

    pub fn retry_after(delay_ms: u64) -> Outcome {
        Outcome::Retry {
            delay_ms: Some(delay_ms),
        }
    }

    pub fn reject(reason: impl Into<String>) -> Outcome {
        Outcome::Reject(reason.into())
    }
}

/// An attachment's configuration: the `KEY=VALUE` pairs given at attach time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Config(Vec<(String, String)>);

impl Config {
    pub fn new() -> Config {
        Config::default()
    }

    /// Adds a pair (builder style, for tests).
    pub fn with(mut self, key: &str, value: &str) -> Config {
        self.0.push((key.to_owned(), value.to_owned()));
        self
    }

    /// The value of `key` (the last one given, if repeated).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

impl From<Vec<(String, String)>> for Config {
    fn from(pairs: Vec<(String, String)>) -> Self {
        Config(pairs)
    }
}

/// A message a handler published (recorded by [`Context`] in native tests).
#[derive(Debug, Clone, PartialEq)]
pub struct Published {
    pub exchange: String,
    pub routing_key: String,
    pub message: Message,
}

/// What a handler can do besides returning an outcome: read its configuration and the
/// delivery's details, publish, log.
///
/// In the broker, `publish` and `log` go to the host; natively (unit tests) they are
/// recorded, so a test can assert on [`Context::published`] and [`Context::logs`].
#[derive(Debug, Clone)]
pub struct Context {
    queue: String,
    exchange: String,
    delivery_count: u32,
    config: Rc<Config>,
    published: Vec<Published>,
    logs: Vec<(LogLevel, String)>,
}

impl Context {
    /// A context for a first delivery from `queue`, with an empty configuration.
    pub fn new(queue: &str) -> Context {
        Context {
            queue: queue.to_owned(),
            exchange: String::new(),
            delivery_count: 1,
            config: Rc::new(Config::new()),
            published: Vec::new(),
            logs: Vec::new(),
        }
    }

    pub fn with_config(mut self, config: Config) -> Context {
        self.config = Rc::new(config);
        self
    }

    pub fn with_delivery_count(mut self, delivery_count: u32) -> Context {
        self.delivery_count = delivery_count;
        self
    }

    pub fn with_exchange(mut self, exchange: &str) -> Context {
        self.exchange = exchange.to_owned();
        self
    }

    #[cfg(target_arch = "wasm32")]
    pub(crate) fn for_call(
        queue: String,
        exchange: String,
        delivery_count: u32,
        config: Rc<Config>,
    ) -> Context {
        Context {
            queue,
            exchange,
            delivery_count,
            config,
            published: Vec::new(),
            logs: Vec::new(),
        }
    }

    /// The queue the handler is attached to.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// The exchange the message was published to (`""`: the default exchange).
    pub fn exchange(&self) -> &str {
        &self.exchange
    }

    /// Deliveries of this message so far, this one included (1 on the first).
    pub fn delivery_count(&self) -> u32 {
        self.delivery_count
    }

    /// Whether the message was delivered before (and not acked).
    pub fn redelivered(&self) -> bool {
        self.delivery_count > 1
    }

    /// The value of configuration key `key`.
    pub fn config(&self, key: &str) -> Option<&str> {
        self.config.get(key)
    }

    pub fn config_all(&self) -> &Config {
        &self.config
    }

    /// Publishes `message` to `exchange` with `routing_key` (`""` is the default exchange,
    /// where the routing key names a queue). The broker stores it together with this
    /// call's outcome, in one commit; if the call fails, it is not published.
    pub fn publish(
        &mut self,
        exchange: &str,
        routing_key: &str,
        message: Message,
    ) -> Result<(), String> {
        #[cfg(target_arch = "wasm32")]
        {
            crate::__handler::publish(exchange, routing_key, &message)
        }
        #[cfg(not(target_arch = "wasm32"))]
        {
            self.published.push(Published {
                exchange: exchange.to_owned(),
                routing_key: routing_key.to_owned(),
                message,
            });
            Ok(())
        }
    }

    /// Writes a line to the broker's log, tagged with the plugin and queue.
    pub fn log(&mut self, level: LogLevel, text: &str) {
        #[cfg(target_arch = "wasm32")]
        crate::log(level, text);
        #[cfg(not(target_arch = "wasm32"))]
        self.logs.push((level, text.to_owned()));
    }

    /// Messages published so far (native tests; empty in the broker).
    pub fn published(&self) -> &[Published] {
        &self.published
    }

    /// Lines logged so far (native tests; empty in the broker).
    pub fn logs(&self) -> &[(LogLevel, String)] {
        &self.logs
    }
}

/// A handler function: `fn handle(msg: &Message, ctx: &mut Context) -> Outcome`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a handler function",
    label = "expected `fn(&Message, &mut Context) -> Outcome`",
    note = "a handler is `fn handle(msg: &Message, ctx: &mut Context) -> Outcome`"
)]
pub trait HandlerFn {
    fn call(&self, msg: &Message, ctx: &mut Context) -> Outcome;
}

impl<F: Fn(&Message, &mut Context) -> Outcome> HandlerFn for F {
    fn call(&self, msg: &Message, ctx: &mut Context) -> Outcome {
        self(msg, ctx)
    }
}

/// A configuration check: `fn init(queue: &str, config: &Config) -> Result<(), String>`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a handler init function",
    label = "expected `fn(&str, &Config) -> Result<(), String>`",
    note = "an init function is `fn init(queue: &str, config: &Config) -> Result<(), String>`"
)]
pub trait InitFn {
    fn call(&self, queue: &str, config: &Config) -> Result<(), String>;
}

impl<F: Fn(&str, &Config) -> Result<(), String>> InitFn for F {
    fn call(&self, queue: &str, config: &Config) -> Result<(), String> {
        self(queue, config)
    }
}

/// The default init: every configuration is accepted.
pub fn accept_any_config(_queue: &str, _config: &Config) -> Result<(), String> {
    Ok(())
}

#[doc(hidden)]
pub fn __check_handler<H: HandlerFn>(_: &H) {}

#[doc(hidden)]
pub fn __check_init<I: InitFn>(_: &I) {}

/// Makes `handle` (a `fn(&Message, &mut Context) -> Outcome`) this plugin's handler,
/// optionally with `init = check` (a `fn(&str, &Config) -> Result<(), String>` run once
/// per instance, whose error refuses the attachment).
///
/// On `wasm32` this generates the component's exports; natively it only checks the
/// signatures, so the crate unit-tests as ordinary Rust.
#[macro_export]
macro_rules! export_handler {
    () => {
        ::core::compile_error!(
            "export_handler! needs the handler function: `export_handler!(handle);` or `export_handler!(handle, init = check_config);`"
        );
    };
    ($handle:expr $(,)?) => {
        $crate::export_handler!($handle, init = $crate::accept_any_config);
    };
    ($handle:expr, init = $init:expr $(,)?) => {
        const _: () = {
            #[allow(dead_code)]
            fn __broker_check_handler_signatures() {
                $crate::__check_handler(&$handle);
                $crate::__check_init(&$init);
            }
        };
        #[cfg(target_arch = "wasm32")]
        $crate::__export_handler_glue!($handle, $init);
    };
    ($($other:tt)*) => {
        ::core::compile_error!(
            "usage: `export_handler!(handle);` or `export_handler!(handle, init = check_config);`"
        );
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn echo(msg: &Message, ctx: &mut Context) -> Outcome {
        let key = ctx.config("to").unwrap_or("out").to_owned();
        ctx.publish("", &key, msg.clone()).unwrap();
        ctx.log(LogLevel::Info, "echoed");
        if ctx.redelivered() {
            Outcome::reject("seen before")
        } else {
            Outcome::Ack
        }
    }

    #[test]
    fn context_records_publishes_and_logs() {
        let mut ctx = Context::new("q").with_config(Config::new().with("to", "copies"));
        let msg = Message::new("k").with_body("hi");
        assert_eq!(echo(&msg, &mut ctx), Outcome::Ack);
        assert_eq!(ctx.published().len(), 1);
        assert_eq!(ctx.published()[0].routing_key, "copies");
        assert_eq!(ctx.published()[0].message.body(), b"hi");
        assert_eq!(ctx.logs(), [(LogLevel::Info, "echoed".to_owned())]);

        let mut again = Context::new("q").with_delivery_count(2);
        assert_eq!(echo(&msg, &mut again), Outcome::reject("seen before"));
        assert_eq!(again.published()[0].routing_key, "out");
    }

    #[test]
    fn config_takes_the_last_value() {
        let c = Config::new().with("a", "1").with("a", "2");
        assert_eq!(c.get("a"), Some("2"));
        assert_eq!(c.get("b"), None);
    }

    export_handler!(echo);
}
