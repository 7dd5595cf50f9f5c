//! Deploy-time validation: before a version is accepted it routes a few synthetic
//! messages (a handler handles them) under the real per-message limits. A version that
//! traps, runs out of budget or returns an invalid result on any of them is refused,
//! naming the sample and the reason; a plugin that refuses the empty arguments or
//! configuration a sample run uses is only checked as far as it gets.

use std::sync::Arc;

use bytes::Bytes;

use super::binding_map::check_route_output;
use super::convert;
use super::handler::{HandlerError, LiveHandler, LoadedHandler};
use super::instance::{Failure, LiveInstance};
use super::limits::Limits;
use super::loader::{LoadError, LoadedPlugin};
use super::stats::PluginStats;
use crate::message::{Headers, Message};

/// The exchange (or handler queue) name sample runs use.
const SAMPLE_NAME: &str = "deploy-check";

/// Binding keys tried before the samples (each kept if the plugin accepts it), so a
/// plugin that misuses its bindings shows it.
const SAMPLE_BINDINGS: [(u64, &str); 4] = [(1, "sample"), (2, "#"), (3, "sample.*"), (4, "")];

/// The synthetic messages, each with a description for the refusal.
pub fn sample_messages() -> Vec<(&'static str, Message)> {
    let empty = Message::text("sample", "");
    let mut json = Message::text(
        "sample.key.1",
        r#"{"id":1,"amount":100,"country":"DE","user":{"name":"sample"},"items":[1,2,3]}"#,
    );
    json.properties.content_type = Some("application/json".into());
    json.properties.message_id = Some("sample-1".into());
    let mut headers = Headers::new();
    headers.insert("x-sample".into(), "1".into());
    headers.insert("x-count".into(), 3.into());
    json.headers = headers;
    let mut binary = Message::text("", "");
    binary.body = Bytes::from((0..=255u8).cycle().take(1024).collect::<Vec<u8>>());
    vec![
        ("routing key `sample`, empty body", empty),
        ("routing key `sample.key.1`, JSON body, headers", json),
        ("empty routing key, 1 KiB binary body", binary),
    ]
}

fn refused(sample: usize, description: &str, reason: impl Into<String>) -> LoadError {
    LoadError::Sample {
        sample,
        description: description.to_owned(),
        reason: reason.into(),
    }
}

/// A sample run's refusal, and whether the time budget alone caused it.
struct Refusal {
    error: LoadError,
    on_time: bool,
}

impl From<LoadError> for Refusal {
    fn from(error: LoadError) -> Self {
        Refusal {
            error,
            on_time: false,
        }
    }
}

fn failed(sample: usize, description: &str, failure: Failure) -> Refusal {
    Refusal {
        on_time: failure.out_of_time,
        error: refused(sample, description, failure.reason),
    }
}

/// Runs the samples through a fresh instance of exchange plugin `plugin`. A run refused
/// for its time budget alone is run once more: a call's time is the CPU time of its
/// thread, which on a busy (virtual) machine also counts time the kernel or hypervisor
/// took from it (contended page faults of a fresh instance, steal), and refusing a
/// plugin for that (a bundled one, at startup) costs more than a real runaway's second
/// budget.
pub(crate) fn check_exchange(plugin: &LoadedPlugin, limits: &Limits) -> Result<(), LoadError> {
    match run_exchange_samples(plugin, limits) {
        Err(Refusal { on_time: true, .. }) => {
            tracing::info!(plugin = %plugin.info.name, "a deploy sample ran out of time; running the samples again");
            run_exchange_samples(plugin, limits).map_err(|refusal| match refusal {
                Refusal {
                    on_time: true,
                    error:
                        LoadError::Sample {
                            sample,
                            description,
                            reason,
                        },
                } => LoadError::Sample {
                    sample,
                    description,
                    reason: format!("{reason}, on a second run too"),
                },
                Refusal { error, .. } => error,
            })
        }
        other => other.map_err(|refusal| refusal.error),
    }
}

fn run_exchange_samples(plugin: &LoadedPlugin, limits: &Limits) -> Result<(), Refusal> {
    let capabilities = plugin.info.capabilities;
    if capabilities.key_only && (capabilities.reads_body || capabilities.reads_headers) {
        return Err(Refusal::from(LoadError::KeyOnlyReadsMore(
            "its capabilities say key_only and also reads_body or reads_headers; a key-only \
             plugin is handed the routing key alone. Declare key_only alone \
             (Capabilities::KEY_ONLY), or drop it to read the body or headers"
                .into(),
        )));
    }
    // Counters of its own: validation is not traffic.
    let stats = Arc::new(PluginStats::default());
    let name: Arc<str> = SAMPLE_NAME.into();
    let mut instance = match LiveInstance::new(plugin, &name, &[], limits, &stats) {
        Ok(Ok(instance)) => instance,
        Ok(Err(reason)) => {
            tracing::debug!(plugin = %plugin.info.name, %reason, "plugin refuses empty arguments; samples not routed");
            return Ok(());
        }
        Err(failure) => return Err(failed(0, "init", failure)),
    };
    let mut bound = Vec::new();
    for (id, key) in SAMPLE_BINDINGS {
        let accepted = instance
            .validate_binding(key, &[])
            .and_then(|valid| match valid {
                Ok(()) => instance.bind(id, key, &[]),
                Err(reason) => Ok(Err(reason)),
            })
            .map_err(|failure| failed(0, &format!("binding `{key}`"), failure))?;
        if accepted.is_ok() {
            bound.push(id);
        }
    }
    let capabilities = plugin.info.capabilities;
    for (i, (description, msg)) in sample_messages().iter().enumerate() {
        let view = convert::message(msg, capabilities);
        let ids = instance
            .route(&view, msg.body.clone())
            .map_err(|failure| failed(i + 1, description, failure))?;
        check_route_output(&ids, limits.max_route_ids, |id| bound.contains(&id))
            .map_err(|failure| failed(i + 1, description, failure))?;
        if instance.asked_for_hidden_body() {
            return Err(Refusal::from(LoadError::KeyOnlyReadsMore(format!(
                "it declares key_only (Capabilities::KEY_ONLY) but read the body of deploy \
                 sample {} ({description}); a key-only plugin is handed the routing key \
                 alone and its results are cached by routing key. To route on the body, \
                 declare `Capabilities {{ reads_body: true, ..Capabilities::default() }}`",
                i + 1
            ))));
        }
    }
    Ok(())
}

/// Runs the samples through a fresh instance of handler `handler` (attached with no
/// configuration to a sample queue).
pub(crate) fn check_handler(
    handler: &Arc<LoadedHandler>,
    limits: &Limits,
) -> Result<(), LoadError> {
    let name: Arc<str> = handler.info().name.as_str().into();
    let mut live = match LiveHandler::new(&name, limits, handler, 0, SAMPLE_NAME, &[]) {
        Ok(live) => live,
        Err(HandlerError::Config(reason)) => {
            tracing::debug!(plugin = %name, %reason, "handler refuses an empty configuration; samples not handled");
            return Ok(());
        }
        Err(e) => return Err(refused(0, "init", e.to_string())),
    };
    for (i, (description, msg)) in sample_messages().iter().enumerate() {
        live.handle(msg, 1)
            .map_err(|reason| refused(i + 1, description, reason))?;
    }
    Ok(())
}
