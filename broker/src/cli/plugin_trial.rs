//! `broker plugin deploy --shadow | --canary PERCENT` and `broker plugin shadow`: a
//! version on trial next to the active one, and what it did.

use broker::Client;
use broker::plugin::TrialMode;
use serde_json::Value;

use super::admin::{ago, rfc3339};
use super::table::{Align, Table};

pub async fn deploy(
    client: &Client,
    name: &str,
    wasm: &[u8],
    mode: TrialMode,
) -> anyhow::Result<()> {
    let v = client.deploy_plugin_trial(name, wasm, mode).await?;
    let what = match mode {
        TrialMode::Shadow => "shadow (decides nothing)".to_owned(),
        TrialMode::Canary { percent } => format!("canary routing {percent}% of the messages"),
    };
    println!(
        "plugin {name} version {} deployed as {what} next to active version {} (sha256 {}, {} \
         bytes); `broker plugin promote {name}` makes it active, `broker plugin rollback \
         {name}` drops it",
        v["version"],
        v["active_version"],
        v["hash"].as_str().unwrap_or("?"),
        v["size_bytes"],
    );
    Ok(())
}

/// One line for a plugin's trial in `plugin list`.
pub fn describe(trial: &serde_json::Map<String, Value>) -> String {
    match trial.get("percent") {
        Some(percent) => format!("canary v{} routes {percent}%", trial["version"]),
        None => format!(
            "shadow v{} runs next to the active version",
            trial["version"]
        ),
    }
}

/// `plugin shadow`: the counts, then the newest differences.
pub fn print_report(report: &Value) {
    let name = report["name"].as_str().unwrap_or("?");
    let Some(trial) = report["trial"].as_object() else {
        println!("plugin {name} has no shadow or canary version");
        return;
    };
    println!(
        "plugin {name}: {} (active version {})",
        describe(trial),
        report["active_version"]
    );
    match trial.get("percent") {
        Some(_) => println!(
            "  canary routed {} messages, failed on {} (routed by the active version instead)",
            report["canary_messages"], report["canary_errors"]
        ),
        None => println!(
            "  compared {} messages: {} routed differently, shadow failed on {}, skipped {} \
             (exchange behind)",
            report["compared"],
            report["differed"],
            report["shadow_failures"],
            report["shadow_skipped"]
        ),
    }
    if let Some(cause) = report["failing"].as_str() {
        println!("  judged failing: {cause}");
    }
    let examples = report["examples"].as_array().cloned().unwrap_or_default();
    if examples.is_empty() {
        return;
    }
    let mut table = Table::new(&[
        ("AT (UTC)", Align::Left),
        ("EXCHANGE", Align::Left),
        ("ROUTING KEY", Align::Left),
        ("HEADERS", Align::Left),
        ("ACTIVE", Align::Left),
        ("SHADOW", Align::Left),
    ]);
    for e in &examples {
        let shadow = match e["shadow"]["error"].as_str() {
            Some(error) => format!("failed: {error}"),
            None => queues(&e["shadow"]),
        };
        table.row(vec![
            format!(
                "{} ({})",
                rfc3339(e["at"].as_u64().unwrap_or(0)),
                ago(e["at"].as_u64().unwrap_or(0))
            ),
            e["exchange"].as_str().unwrap_or("?").to_owned(),
            e["routing_key"].as_str().unwrap_or("").to_owned(),
            e["headers"].to_string(),
            queues(&e["active"]),
            shadow,
        ]);
    }
    table.print();
}

/// The queues (binding keys) a route reached, or `-`.
fn queues(outcome: &Value) -> String {
    let reached: Vec<String> = outcome["bindings"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|b| match b["queue"].as_str() {
            Some(queue) => format!("{queue} ({})", b["key"].as_str().unwrap_or("")),
            None => format!("binding {} (removed)", b["binding"]),
        })
        .collect();
    if reached.is_empty() {
        "-".into()
    } else {
        reached.join(", ")
    }
}
