//! `broker plugin ...`: deploy and manage plugins on a broker, and the plugin author's
//! tools (new, build, test) that need no broker.

use anyhow::{Context as _, bail};
use clap::Subcommand;

use super::admin::{ServerArg, ago, rfc3339};
use super::table::{self, Align, Table};
use super::{plugin_build, plugin_new, plugin_test, plugin_trial};

#[derive(Subcommand)]
pub enum Plugin {
    /// Deploy a new version of a Wasm exchange plugin (a component built with plugin-sdk);
    /// NAME becomes an exchange type for `declare exchange --type NAME`.
    Deploy {
        name: String,
        path: std::path::PathBuf,
        /// Go back to the version active before this one if this one starts failing
        /// (at least 5 failed calls, a tenth or more of its calls).
        #[arg(long)]
        auto_rollback: bool,
        /// Do not activate it: run it next to the active version on live traffic without
        /// effect, and count how it would have routed differently (`plugin shadow NAME`).
        #[arg(long, conflicts_with_all = ["canary", "auto_rollback"])]
        shadow: bool,
        /// Do not activate it: let it route PERCENT of the messages (each message by
        /// exactly one version), dropped automatically if it fails.
        #[arg(long, value_name = "PERCENT", conflicts_with = "auto_rollback")]
        canary: Option<f64>,
        /// First run the plugin on these messages (JSON lines, as `plugin test
        /// --sample` takes) here, in the real host with the default limits, and do not
        /// upload it if any fails.
        #[arg(long)]
        sample: Option<std::path::PathBuf>,
        /// With --sample: an exchange's binding key for that run. Repeatable.
        #[arg(long = "binding", requires = "sample")]
        bindings: Vec<String>,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Make the shadow or canary version the active one.
    Promote {
        name: String,
        #[command(flatten)]
        server: ServerArg,
    },
    /// What the shadow or canary version did: messages compared, routed differently,
    /// failures, and the newest differences.
    Shadow {
        name: String,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Drop the shadow or canary version if there is one (the active version stays);
    /// otherwise activate an earlier version (default: the one before the active one).
    Rollback {
        name: String,
        #[arg(long)]
        to: Option<u64>,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Lift quarantine for every exchange of a plugin (each restarts at its next message).
    Reset {
        name: String,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Delete stored versions of a plugin but the newest N (the active version and the
    /// one before it are always kept).
    Prune {
        name: String,
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        keep: u64,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Delete a plugin with every stored version, once no exchange is of its type and no
    /// handler attachment runs it.
    Delete {
        name: String,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Exchange types with their active version, hash and counters.
    List(ServerArg),
    /// Every deployed version of a plugin.
    History {
        name: String,
        #[command(flatten)]
        server: ServerArg,
    },
    /// A plugin's recent log lines (the broker keeps the newest 1000 per plugin, from
    /// every version and every exchange or attachment, since it started).
    Logs {
        name: String,
        /// Keep printing new lines as they are logged (polls twice a second).
        #[arg(long)]
        follow: bool,
        /// How many of the newest lines to print first.
        #[arg(long, default_value_t = 100)]
        lines: usize,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Write a new plugin crate (an exchange type or a handler) built on plugin-sdk.
    New(plugin_new::NewArgs),
    /// Build a plugin crate for wasm32 (`cargo build --release --target
    /// wasm32-unknown-unknown`) and print the component's path.
    Build(plugin_build::BuildArgs),
    /// Run a built plugin on sample messages in the real Wasm host, without a broker, and
    /// print what each message is routed to (or the failure).
    Test(plugin_test::TestArgs),
}

pub async fn run(what: Plugin) -> anyhow::Result<()> {
    match what {
        Plugin::New(args) => plugin_new::run(args)?,
        Plugin::Build(args) => plugin_build::run(args)?,
        Plugin::Test(args) => plugin_test::run(args)?,
        Plugin::Logs {
            name,
            follow,
            lines,
            server,
        } => {
            let client = server.connect().await?;
            let mut after = 0;
            loop {
                let limit = if after == 0 {
                    lines
                } else {
                    broker::plugin::LOG_RING_LINES
                };
                let reply = client.plugin_logs(&name, after, limit).await?;
                for line in reply["lines"].as_array().into_iter().flatten() {
                    println!(
                        "{} {:<5} {}: {}",
                        rfc3339(line["at"].as_u64().unwrap_or(0)),
                        line["level"].as_str().unwrap_or("?").to_uppercase(),
                        line["scope"].as_str().unwrap_or("?"),
                        line["text"].as_str().unwrap_or("")
                    );
                }
                after = reply["last_seq"].as_u64().unwrap_or(after);
                if !follow {
                    break;
                }
                use std::io::Write as _;
                std::io::stdout().flush()?;
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
            client.close().await;
        }
        Plugin::Deploy {
            name,
            path,
            auto_rollback,
            shadow,
            canary,
            sample,
            bindings,
            server,
        } => {
            let wasm =
                std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            if let Some(sample) = sample {
                let messages = plugin_test::messages(&[], Some(&sample))?;
                let failed = plugin_test::run_on(&wasm, &bindings, &[], &messages)?;
                if failed > 0 {
                    bail!(
                        "not deployed: {failed} of {} messages of {} failed (above)",
                        messages.len(),
                        sample.display()
                    );
                }
            }
            let client = server.connect().await?;
            let trial = match (shadow, canary) {
                (true, _) => Some(broker::plugin::TrialMode::Shadow),
                (_, Some(percent)) => Some(broker::plugin::TrialMode::Canary { percent }),
                _ => None,
            };
            if let Some(mode) = trial {
                plugin_trial::deploy(&client, &name, &wasm, mode).await?;
                client.close().await;
                return Ok(());
            }
            let started = std::time::Instant::now();
            let v = client
                .deploy_plugin_with(&name, &wasm, auto_rollback)
                .await?;
            if v["unchanged"] == true {
                println!(
                    "plugin {name} version {} is already active with these bytes",
                    v["version"]
                );
            } else {
                println!(
                    "plugin {name} version {} active in {:.0} ms (sha256 {}, {} bytes{})",
                    v["version"],
                    started.elapsed().as_secs_f64() * 1e3,
                    v["hash"].as_str().unwrap_or("?"),
                    v["size_bytes"],
                    if auto_rollback {
                        ", auto-rollback on"
                    } else {
                        ""
                    }
                );
            }
            client.close().await;
        }
        Plugin::Rollback { name, to, server } => {
            let client = server.connect().await?;
            let v = client.rollback_plugin(&name, to).await?;
            match &v["dropped"] {
                serde_json::Value::Null => {
                    println!("plugin {name} rolled back to version {}", v["version"])
                }
                dropped => println!(
                    "plugin {name}: {} version {dropped} dropped; version {} stays active",
                    v["trial"]["mode"].as_str().unwrap_or("trial"),
                    v["version"]
                ),
            }
            client.close().await;
        }
        Plugin::Delete { name, server } => {
            let client = server.connect().await?;
            let v = client.delete_plugin(&name).await?;
            println!("plugin {name} deleted with versions {}", v["deleted"]);
            client.close().await;
        }
        Plugin::Prune { name, keep, server } => {
            let client = server.connect().await?;
            let v = client.prune_plugin(&name, keep).await?;
            let list = |key: &str| -> String {
                let versions: Vec<String> = v[key]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|x| x.to_string())
                    .collect();
                if versions.is_empty() {
                    "none".into()
                } else {
                    versions.join(", ")
                }
            };
            println!(
                "plugin {name}: deleted versions {}; kept {}",
                list("pruned"),
                list("kept")
            );
            client.close().await;
        }
        Plugin::Reset { name, server } => {
            let client = server.connect().await?;
            let v = client.reset_plugin(&name).await?;
            let reset: Vec<&str> = v["reset"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|x| x.as_str())
                .collect();
            match reset.as_slice() {
                [] => println!("plugin {name}: no exchange was quarantined"),
                names => println!("plugin {name}: quarantine lifted for {}", names.join(", ")),
            }
            client.close().await;
        }
        Plugin::Promote { name, server } => {
            let client = server.connect().await?;
            let v = client.promote_plugin(&name).await?;
            println!(
                "plugin {name} version {} promoted: now active",
                v["version"]
            );
            client.close().await;
        }
        Plugin::Shadow { name, server } => {
            let client = server.connect().await?;
            let report = client.plugin_shadow(&name).await?;
            plugin_trial::print_report(&report);
            client.close().await;
        }
        Plugin::List(server) => {
            let client = server.connect().await?;
            let list = client.list_plugins().await?;
            print_plugins(&list);
            client.close().await;
        }
        Plugin::History { name, server } => {
            let client = server.connect().await?;
            let history = client.plugin_history(&name).await?;
            print_history(&history);
            client.close().await;
        }
    }
    Ok(())
}

/// `plugin list`: one row per plugin, then its automatic rollback and quarantined
/// exchanges, if any, indented under it.
fn print_plugins(list: &serde_json::Value) {
    let mut table = Table::new(&[
        ("PLUGIN", Align::Left),
        ("KIND", Align::Left),
        ("VERSION", Align::Right),
        ("CALLS", Align::Right),
        ("ERRORS", Align::Right),
        ("P99_CALL", Align::Right),
        ("SHA256", Align::Left),
        ("MESSAGES BY VERSION", Align::Left),
    ]);
    for p in list["plugins"].as_array().into_iter().flatten() {
        let version = match (&p["active_version"], p["bundled"].as_bool()) {
            (serde_json::Value::Number(n), _) => n.to_string(),
            (_, Some(true)) => "bundled".into(),
            _ => "-".into(),
        };
        let hash = p["hash"].as_str().map_or("-", |h| &h[..h.len().min(12)]);
        let by_version: Vec<String> = p["versions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|v| v["version"] != 0)
            .map(|v| format!("v{}={}", v["version"], v["messages"]))
            .collect();
        table.row(vec![
            p["name"].as_str().unwrap_or("?").to_owned(),
            p["kind"].as_str().unwrap_or("?").to_owned(),
            version,
            p["calls"].as_u64().unwrap_or(0).to_string(),
            p["errors"].as_u64().unwrap_or(0).to_string(),
            table::p99(p["p99_call_us"].as_f64()),
            hash.to_owned(),
            by_version.join(" "),
        ]);
        if let Some(t) = p["trial"].as_object() {
            table.note(plugin_trial::describe(t));
        }
        if let Some(r) = p["last_auto_rollback"].as_object()
            && let Some(cause) = r.get("canary")
        {
            table.note(format!(
                "canary v{} rolled back automatically {} ({}; {} errors in {} messages)",
                r["from"],
                ago(r["at"].as_u64().unwrap_or(0)),
                cause.as_str().unwrap_or("?"),
                r["errors"],
                r["calls"]
            ));
        } else if let Some(r) = p["last_auto_rollback"].as_object() {
            table.note(format!(
                "auto-rolled back v{} -> v{} {} ({} errors in {} calls)",
                r["from"],
                r["to"],
                ago(r["at"].as_u64().unwrap_or(0)),
                r["errors"],
                r["calls"]
            ));
        }
        for q in p["quarantined"].as_array().into_iter().flatten() {
            table.note(format!(
                "exchange {} quarantined {} ({})",
                q["exchange"].as_str().unwrap_or("?"),
                ago(q["since"].as_u64().unwrap_or(0)),
                q["reason"].as_str().unwrap_or("?")
            ));
        }
    }
    table.print();
}

/// `plugin history`: one row per version, oldest first, `*` marking the active one and
/// `shadow` or `canary` the one on trial.
fn print_history(history: &serde_json::Value) {
    let mut table = Table::new(&[
        ("", Align::Left),
        ("VERSION", Align::Right),
        ("DEPLOYED (UTC)", Align::Left),
        ("BY", Align::Left),
        ("BYTES", Align::Right),
        ("SHA256", Align::Left),
    ]);
    for v in history["versions"].as_array().into_iter().flatten() {
        let mark = match (v["active"] == true, v["trial"]["mode"].as_str()) {
            (true, _) => "*",
            (false, Some(mode)) => mode,
            (false, None) => "",
        };
        table.row(vec![
            mark.to_owned(),
            v["version"].to_string(),
            rfc3339(v["deployed_at"].as_u64().unwrap_or(0)),
            v["deployed_by"].as_str().unwrap_or("?").to_owned(),
            v["size_bytes"].to_string(),
            v["hash"].as_str().unwrap_or("?").to_owned(),
        ]);
    }
    table.print();
}
