//! `broker handler attach|detach|list`: consumer-side Wasm handlers on queues.

use std::collections::BTreeMap;

use broker::protocol::{AttachHandler, HandlerMode};
use clap::{Subcommand, ValueEnum};

use super::admin::ServerArg;
use super::table::{Align, Table};

#[derive(Clone, Copy, ValueEnum)]
pub enum Mode {
    /// The handler consumes the queue (ack / retry / reject).
    Consume,
    /// Subscribers that name it (`consume --filter`) get deliveries through it.
    Filter,
}

#[derive(Subcommand)]
pub enum Handler {
    /// Attach a handler plugin (bundled, or deployed with `plugin deploy`) to a queue.
    Attach {
        queue: String,
        plugin: String,
        #[arg(long, value_enum, default_value = "consume")]
        mode: Mode,
        /// Calls in flight at once (one plugin instance each), 1 to 64.
        #[arg(long, default_value_t = 1)]
        concurrency: u32,
        /// A configuration entry for the plugin, KEY=VALUE. Repeatable.
        #[arg(long = "config", value_parser = parse_pair)]
        config: Vec<(String, String)>,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Detach a handler from a queue (its held messages go back to the queue).
    Detach {
        queue: String,
        plugin: String,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Attachments with their mode, plugin version and counters.
    List(ServerArg),
}

pub fn parse_pair(arg: &str) -> Result<(String, String), String> {
    match arg.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        Some(_) => Err(format!("`{arg}` has an empty key")),
        None => Err(format!("`{arg}` is not KEY=VALUE")),
    }
}

pub async fn run(what: Handler) -> anyhow::Result<()> {
    match what {
        Handler::Attach {
            queue,
            plugin,
            mode,
            concurrency,
            config,
            server,
        } => {
            let client = server.connect().await?;
            let mode = match mode {
                Mode::Consume => HandlerMode::Consume,
                Mode::Filter => HandlerMode::Filter,
            };
            client
                .attach_handler(AttachHandler {
                    queue: queue.clone(),
                    plugin: plugin.clone(),
                    mode,
                    concurrency,
                    config: config.into_iter().collect::<BTreeMap<_, _>>(),
                })
                .await?;
            let mode = serde_json::to_value(mode)?;
            println!(
                "handler {plugin} attached to {queue} ({} mode, concurrency {concurrency})",
                mode.as_str().unwrap_or("?")
            );
            client.close().await;
        }
        Handler::Detach {
            queue,
            plugin,
            server,
        } => {
            let client = server.connect().await?;
            client.detach_handler(&queue, &plugin).await?;
            println!("handler {plugin} detached from {queue}");
            client.close().await;
        }
        Handler::List(server) => {
            let client = server.connect().await?;
            let list = client.list_handlers().await?;
            let mut table = Table::new(&[
                ("QUEUE", Align::Left),
                ("PLUGIN", Align::Left),
                ("MODE", Align::Left),
                ("CONC", Align::Right),
                ("VERSION", Align::Right),
                ("HANDLED", Align::Right),
                ("ACKED", Align::Right),
                ("RETRIED", Align::Right),
                ("REJECTED", Align::Right),
                ("FAILED", Align::Right),
                ("PUBLISHED", Align::Right),
                ("CONFIG", Align::Left),
            ]);
            for h in list["handlers"].as_array().into_iter().flatten() {
                let s = &h["stats"];
                let version = match &h["plugin_version"] {
                    serde_json::Value::Number(n) => n.to_string(),
                    _ => "-".into(),
                };
                let config: Vec<String> = h["config"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                    .collect();
                let text = |v: &serde_json::Value| v.as_str().unwrap_or("?").to_owned();
                table.row(vec![
                    text(&h["queue"]),
                    text(&h["plugin"]),
                    text(&h["mode"]),
                    h["concurrency"].to_string(),
                    version.clone(),
                    s["handled"].to_string(),
                    s["acked"].to_string(),
                    s["retried"].to_string(),
                    s["rejected"].to_string(),
                    s["failed"].to_string(),
                    s["published"].to_string(),
                    config.join(","),
                ]);
                if let Some(refused) = h["refused"].as_object() {
                    table.note(format!(
                        "version {} refused this attachment, which stays on version {}: {}",
                        refused["version"],
                        version,
                        refused["reason"].as_str().unwrap_or("?")
                    ));
                }
            }
            table.print();
            client.close().await;
        }
    }
    Ok(())
}
