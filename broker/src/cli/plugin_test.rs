//! `broker plugin test FILE.wasm`: runs a built plugin in the real Wasm host (the same
//! compiler, limits and deploy checks as the broker), without a broker, and prints what
//! it does with each message.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context as _, bail};
use broker::exchange::Exchange as _;
use broker::message::{Headers, Message};
use broker::plugin::testing::{HandlerHarness, sample_messages};
use broker::plugin::{HandlerOutcome, Limits, PluginHost};
use bytes::Bytes;
use clap::Args;

/// The name the plugin is loaded under (it appears in its log lines).
const NAME: &str = "plugin-test";

#[derive(Args)]
pub struct TestArgs {
    /// The component, as `broker plugin build` printed it.
    wasm: PathBuf,
    /// An exchange's binding key (binding ids 1, 2, ... in order). Repeatable.
    #[arg(long = "binding")]
    bindings: Vec<String>,
    /// A message to route, as JSON: `{"routing_key": "a.b", "body": "text",
    /// "headers": {"x": 1}, "content_type": "text/plain"}` (every field optional).
    /// Repeatable.
    #[arg(long = "message")]
    messages: Vec<String>,
    /// A file of such messages, one JSON object per line.
    #[arg(long)]
    sample: Option<PathBuf>,
    /// A handler's configuration entry, KEY=VALUE. Repeatable.
    #[arg(long = "config", value_parser = super::handler::parse_pair)]
    config: Vec<(String, String)>,
}

/// One message given with `--message` or `--sample`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct MessageInput {
    #[serde(default)]
    routing_key: String,
    #[serde(default)]
    body: String,
    #[serde(default)]
    headers: Headers,
    content_type: Option<String>,
}

impl MessageInput {
    fn into_message(self) -> Message {
        let mut msg = Message::text(self.routing_key, "");
        msg.body = Bytes::from(self.body);
        msg.headers = self.headers;
        msg.properties.content_type = self.content_type;
        msg
    }
}

/// The messages to run, each with a description: the user's (`--message` JSON, then the
/// lines of a `--sample` file), else the deploy check's samples.
pub fn messages(
    messages: &[String],
    sample: Option<&std::path::Path>,
) -> anyhow::Result<Vec<(String, Message)>> {
    let mut lines: Vec<(String, String)> = messages
        .iter()
        .enumerate()
        .map(|(i, m)| (format!("--message {}", i + 1), m.clone()))
        .collect();
    if let Some(file) = sample {
        let text =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        let numbered = text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty());
        lines.extend(numbered.map(|(i, l)| (format!("{}:{}", file.display(), i + 1), l.into())));
    }
    if lines.is_empty() {
        let samples = sample_messages().into_iter();
        return Ok(samples.map(|(what, m)| (what.to_owned(), m)).collect());
    }
    lines
        .into_iter()
        .map(|(origin, line)| {
            let input: MessageInput =
                serde_json::from_str(&line).with_context(|| format!("{origin}: `{line}`"))?;
            let msg = input.into_message();
            let what = format!("key `{}`, {} bytes", msg.routing_key, msg.body.len());
            Ok((what, msg))
        })
        .collect()
}

pub fn run(args: TestArgs) -> anyhow::Result<()> {
    let wasm =
        std::fs::read(&args.wasm).with_context(|| format!("reading {}", args.wasm.display()))?;
    let messages = messages(&args.messages, args.sample.as_deref())?;
    let failed = run_on(&wasm, &args.bindings, &args.config, &messages)?;
    if failed > 0 {
        bail!("{failed} of {} messages failed", messages.len());
    }
    Ok(())
}

/// Loads `wasm` in a host of its own (default limits, the deploy checks), binds `keys`
/// (an exchange) or configures it with `config` (a handler), and runs each message,
/// printing a line each; returns how many failed.
pub fn run_on(
    wasm: &[u8],
    keys: &[String],
    config: &[(String, String)],
    messages: &[(String, Message)],
) -> anyhow::Result<usize> {
    let host = PluginHost::new(Limits::default())?;
    // Loading runs the deploy checks: a version the broker would refuse is refused here.
    let info = host
        .load_blocking(NAME, wasm)
        .context("a deploy would refuse this plugin")?;
    let failed = match host.info(NAME) {
        Some(_) => {
            let caps = info.capabilities;
            println!(
                "exchange plugin: key_only={} reads_headers={} reads_body={}",
                caps.key_only, caps.reads_headers, caps.reads_body
            );
            run_exchange(&host, keys, messages)?
        }
        None => {
            println!("handler plugin");
            run_handler(wasm, config, messages)?
        }
    };
    Ok(failed)
}

/// Routes each message; returns how many failed.
fn run_exchange(
    host: &PluginHost,
    keys: &[String],
    messages: &[(String, Message)],
) -> anyhow::Result<usize> {
    let none = Headers::new();
    let mut exchange = host.create_exchange(NAME, "test", &none)?;
    for (id, key) in (1u64..).zip(keys) {
        exchange
            .bind(id, key, &none)
            .with_context(|| format!("binding {id} (`{key}`)"))?;
        println!("binding {id}: `{key}`");
    }
    let mut failed = 0;
    for (i, (what, msg)) in messages.iter().enumerate() {
        let mut out = Vec::new();
        let cache_hits = || host.stats(NAME).map_or(0, |s| s.cache_hits);
        let hits_before = cache_hits();
        let started = Instant::now();
        let result = exchange.route(msg, &mut out);
        let micros = started.elapsed().as_secs_f64() * 1e6;
        let cost = if cache_hits() > hits_before {
            "from the key cache, no call".to_owned()
        } else {
            match exchange.last_call_fuel() {
                Some(fuel) => format!("{micros:.0}us, fuel {fuel}"),
                None => format!("{micros:.0}us"),
            }
        };
        match result {
            Ok(()) if out.is_empty() => println!("message {} ({what}): unroutable ({cost})", i + 1),
            Ok(()) => {
                out.sort_unstable();
                out.dedup();
                let chosen: Vec<String> = out
                    .iter()
                    .map(|&id| match keys.get(id as usize - 1) {
                        Some(key) => format!("{id} (`{key}`)"),
                        None => id.to_string(),
                    })
                    .collect();
                println!(
                    "message {} ({what}): bindings {} ({cost})",
                    i + 1,
                    chosen.join(", ")
                );
            }
            Err(e) => {
                failed += 1;
                println!("message {} ({what}): FAILED: {e}", i + 1);
            }
        }
    }
    Ok(failed)
}

/// Handles each message as a first delivery; returns how many calls failed.
fn run_handler(
    wasm: &[u8],
    config: &[(String, String)],
    messages: &[(String, Message)],
) -> anyhow::Result<usize> {
    let config: Vec<(&str, &str)> = config
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let mut harness = HandlerHarness::new(wasm, "test", &config)?;
    let mut failed = 0;
    for (i, (what, msg)) in messages.iter().enumerate() {
        let started = Instant::now();
        let result = harness.handle(msg);
        let micros = started.elapsed().as_secs_f64() * 1e6;
        match result {
            Ok(handled) => {
                let outcome = match handled.outcome {
                    HandlerOutcome::Ack => "ack".to_owned(),
                    HandlerOutcome::Retry(after) => format!("retry (after {after:?} ms)"),
                    HandlerOutcome::Reject(reason) => format!("reject: {reason}"),
                    HandlerOutcome::Drop => "drop".to_owned(),
                    HandlerOutcome::Deliver(_) => "deliver a replacement".to_owned(),
                };
                let published: Vec<String> = handled
                    .published
                    .iter()
                    .map(|m| format!("`{}`/`{}`", m.exchange, m.routing_key))
                    .collect();
                println!(
                    "message {} ({what}): {outcome}; published {} [{}] ({micros:.0}us)",
                    i + 1,
                    published.len(),
                    published.join(", ")
                );
            }
            Err(reason) => {
                failed += 1;
                println!("message {} ({what}): FAILED: {reason}", i + 1);
            }
        }
    }
    Ok(failed)
}
