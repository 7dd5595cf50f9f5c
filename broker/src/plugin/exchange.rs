//! One declared exchange backed by a plugin instance: keeps the bindings (to replay into
//! a fresh instance), validates what the plugin returns, caches key-only routes, and
//! contains failures (discard the instance, count, quarantine after too many in a row).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::bindings::wit;
use super::convert;
use super::instance::{Failure, LiveInstance};
use super::key_cache::KeyCache;
use super::limits::Limits;
use super::loader::LoadedPlugin;
use super::registry::PluginSlot;
use super::stats::PluginStats;
use crate::exchange::{BindingId, Exchange, ExchangeError};
use crate::message::{Headers, Message};

/// The part of an exchange's state the host can reach while the router owns the exchange.
#[derive(Debug, Default)]
pub struct ExchangeControl {
    quarantined: AtomicBool,
    reset_requested: AtomicBool,
}

impl ExchangeControl {
    pub fn is_quarantined(&self) -> bool {
        self.quarantined.load(Ordering::Acquire)
    }

    /// Asks the exchange to leave quarantine with a fresh instance at its next call.
    pub fn request_reset(&self) {
        self.reset_requested.store(true, Ordering::Release);
    }
}

/// Hashes binding ids (assigned by the broker, so not attacker-chosen) with one multiply;
/// every routed id is looked up to validate plugin output.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_u64(&mut self, id: u64) {
        self.0 = id.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

type BindingMap = HashMap<BindingId, BoundKey, BuildHasherDefault<IdHasher>>;

struct BoundKey {
    key: String,
    arguments: Vec<wit::Header>,
}

pub struct PluginExchange {
    name: Arc<str>,
    arguments: Vec<wit::Header>,
    slot: Arc<PluginSlot>,
    /// The plugin version `instance` runs and the slot generation it came from.
    plugin: Arc<LoadedPlugin>,
    generation: u64,
    /// `None` after a failure, until the next call recreates it.
    instance: Option<LiveInstance>,
    bindings: BindingMap,
    cache: Option<KeyCache>,
    consecutive_failures: u32,
    limits: Limits,
    control: Arc<ExchangeControl>,
    stats: Arc<PluginStats>,
}

fn plugin_failed(failure: Failure) -> ExchangeError {
    ExchangeError::PluginFailed(failure.reason)
}

impl PluginExchange {
    /// Creates the exchange with a first instance; fails if the plugin rejects `arguments`.
    pub(crate) fn new(
        slot: Arc<PluginSlot>,
        name: &str,
        arguments: &Headers,
        limits: &Limits,
        control: Arc<ExchangeControl>,
    ) -> Result<Self, ExchangeError> {
        let (plugin, generation) = slot.current();
        let stats = plugin.stats.clone();
        let name: Arc<str> = name.into();
        let arguments = convert::headers(arguments);
        let instance = match LiveInstance::new(&plugin, &name, &arguments, limits, &stats) {
            Ok(Ok(instance)) => instance,
            Ok(Err(reason)) => return Err(ExchangeError::InvalidArguments(reason)),
            Err(failure) => {
                stats.record_failure(failure.kind);
                return Err(plugin_failed(failure));
            }
        };
        Ok(PluginExchange {
            cache: plugin
                .info
                .capabilities
                .key_only
                .then(|| KeyCache::new(limits.key_cache_entries)),
            name,
            arguments,
            slot,
            plugin,
            generation,
            instance: Some(instance),
            bindings: BindingMap::default(),
            consecutive_failures: 0,
            limits: limits.clone(),
            control,
            stats,
        })
    }

    /// The counters of the plugin version this exchange runs.
    pub fn stats(&self) -> &Arc<PluginStats> {
        &self.stats
    }

    pub fn is_quarantined(&self) -> bool {
        self.control.is_quarantined()
    }

    /// Leaves quarantine; the next call starts a fresh instance with the current bindings.
    pub fn reset(&mut self) {
        self.control.reset_requested.store(false, Ordering::Release);
        self.control.quarantined.store(false, Ordering::Release);
        self.consecutive_failures = 0;
        self.instance = None;
    }

    /// Applies a reset requested through the host, and moves to a redeployed version of
    /// the plugin; then refuses work while quarantined.
    fn check_in(&mut self) -> Result<(), ExchangeError> {
        if self.control.reset_requested.load(Ordering::Acquire) {
            self.reset();
        }
        if self.slot.generation() != self.generation {
            self.upgrade();
        }
        if self.control.is_quarantined() {
            return Err(ExchangeError::Unavailable(format!(
                "exchange `{}` failed {} times in a row; reset or redeploy plugin `{}`",
                self.name, self.consecutive_failures, self.plugin.info.name
            )));
        }
        Ok(())
    }

    /// Switches to the slot's current plugin version if it accepts all bindings;
    /// otherwise stays on the old version (a redeploy must not lose bindings).
    fn upgrade(&mut self) {
        let (plugin, generation) = self.slot.current();
        self.generation = generation;
        match self.start(&plugin) {
            Ok(instance) => {
                tracing::info!(exchange = %self.name, plugin = %plugin.info.name, version = plugin.info.version, "exchange moved to redeployed plugin");
                self.stats = plugin.stats.clone();
                self.plugin = plugin;
                self.instance = Some(instance);
                self.cache = self
                    .plugin
                    .info
                    .capabilities
                    .key_only
                    .then(|| KeyCache::new(self.limits.key_cache_entries));
                self.control.quarantined.store(false, Ordering::Release);
                self.consecutive_failures = 0;
            }
            Err(reason) => {
                tracing::warn!(exchange = %self.name, %reason, "redeployed plugin rejected the exchange; keeping the previous version");
            }
        }
    }

    /// A fresh instance of `plugin` with this exchange's arguments and bindings.
    fn start(&self, plugin: &LoadedPlugin) -> Result<LiveInstance, String> {
        let mut instance = match LiveInstance::new(
            plugin,
            &self.name,
            &self.arguments,
            &self.limits,
            &plugin.stats,
        ) {
            Ok(Ok(instance)) => instance,
            Ok(Err(reason)) => return Err(format!("plugin rejected the exchange: {reason}")),
            Err(failure) => {
                plugin.stats.record_failure(failure.kind);
                return Err(failure.reason);
            }
        };
        for (id, bound) in &self.bindings {
            match instance.bind(*id, &bound.key, &bound.arguments) {
                Ok(Ok(())) => {}
                Ok(Err(reason)) => {
                    return Err(format!("plugin rejected binding {id} on replay: {reason}"));
                }
                Err(failure) => {
                    plugin.stats.record_failure(failure.kind);
                    return Err(failure.reason);
                }
            }
        }
        Ok(instance)
    }

    /// The live instance, recreated (bindings replayed) after a failure.
    fn instance(&mut self) -> Result<&mut LiveInstance, ExchangeError> {
        if self.instance.is_none() {
            match self.start(&self.plugin.clone()) {
                Ok(instance) => self.instance = Some(instance),
                Err(reason) => {
                    // Failures inside `start` were counted there; count the streak here.
                    self.note_failure();
                    return Err(ExchangeError::PluginFailed(format!(
                        "could not restart the plugin: {reason}"
                    )));
                }
            }
        }
        Ok(self.instance.as_mut().expect("just ensured"))
    }

    fn note_failure(&mut self) {
        self.instance = None;
        self.consecutive_failures += 1;
        if self.consecutive_failures >= self.limits.max_consecutive_failures
            && !self.control.quarantined.swap(true, Ordering::AcqRel)
        {
            self.stats.record_quarantine();
            tracing::warn!(exchange = %self.name, plugin = %self.plugin.info.name, failures = self.consecutive_failures, "exchange quarantined");
        }
    }

    /// Records a failed call: count it, drop the instance, maybe quarantine.
    fn fail(&mut self, failure: Failure) -> ExchangeError {
        self.stats.record_failure(failure.kind);
        tracing::warn!(exchange = %self.name, plugin = %self.plugin.info.name, reason = %failure.reason, "plugin call failed");
        self.note_failure();
        plugin_failed(failure)
    }

    /// Checks a route result against the contract: bounded size, bound ids only.
    fn check_output(&self, ids: &[BindingId]) -> Result<(), Failure> {
        if ids.len() > self.limits.max_route_ids {
            return Err(Failure::invalid_output(format!(
                "routed to {} bindings, more than the limit of {}",
                ids.len(),
                self.limits.max_route_ids
            )));
        }
        match ids.iter().find(|id| !self.bindings.contains_key(id)) {
            Some(id) => Err(Failure::invalid_output(format!(
                "routed to binding {id}, which is not bound to this exchange"
            ))),
            None => Ok(()),
        }
    }

    fn with_headers(&self) -> bool {
        self.plugin.info.capabilities.reads_headers
    }

    /// Routes several messages with as few plugin calls as possible (cache hits need
    /// none; the rest go in `route-batch` calls of up to `max_batch` messages). When a
    /// batch call fails, its messages are routed again one call each, so only the message
    /// that makes the plugin fail fails (and counts toward quarantine).
    pub fn route_batch(&mut self, msgs: &[&Message]) -> Vec<Result<Vec<BindingId>, ExchangeError>> {
        let mut results: Vec<Option<Result<Vec<BindingId>, ExchangeError>>> =
            (0..msgs.len()).map(|_| None).collect();
        if let Err(e) = self.check_in() {
            return msgs.iter().map(|_| Err(e.clone())).collect();
        }
        self.stats.record_messages(msgs.len() as u64);
        let mut misses = Vec::new();
        for (i, msg) in msgs.iter().enumerate() {
            match self.cache.as_ref().and_then(|c| c.get(&msg.routing_key)) {
                Some(ids) => results[i] = Some(Ok(ids.to_vec())),
                None => misses.push(i),
            }
        }
        self.stats
            .record_cache_hits((msgs.len() - misses.len()) as u64);
        let chunk = self.limits.max_batch.max(1);
        for indexes in misses.chunks(chunk) {
            let outcome = self.route_chunk(msgs, indexes);
            for (slot, result) in indexes.iter().zip(outcome) {
                results[*slot] = Some(result);
            }
        }
        results
            .into_iter()
            .map(|r| r.expect("every message is a cache hit or in a chunk"))
            .collect()
    }

    /// Routes one message (already counted) with the cache or one `route` call.
    fn route_one(&mut self, msg: &Message, out: &mut Vec<BindingId>) -> Result<(), ExchangeError> {
        if let Some(ids) = self.cache.as_ref().and_then(|c| c.get(&msg.routing_key)) {
            out.extend_from_slice(ids);
            self.stats.record_cache_hits(1);
            return Ok(());
        }
        let view = convert::message(msg, self.with_headers());
        let routed = self.instance()?.route(&view, msg.body.clone());
        match routed.and_then(|ids| self.check_output(&ids).map(|()| ids)) {
            Ok(ids) => {
                self.consecutive_failures = 0;
                if let Some(cache) = &mut self.cache {
                    cache.insert(&msg.routing_key, &ids);
                }
                out.extend_from_slice(&ids);
                Ok(())
            }
            Err(failure) => Err(self.fail(failure)),
        }
    }
    fn route_chunk(
        &mut self,
        msgs: &[&Message],
        indexes: &[usize],
    ) -> Vec<Result<Vec<BindingId>, ExchangeError>> {
        let fail_all = |e: ExchangeError| indexes.iter().map(|_| Err(e.clone())).collect();
        if let Err(e) = self.check_in() {
            return fail_all(e);
        }
        let with_headers = self.with_headers();
        let views: Vec<wit::Message> = indexes
            .iter()
            .map(|&i| convert::message(msgs[i], with_headers))
            .collect();
        let bodies = indexes.iter().map(|&i| msgs[i].body.clone());
        let routed = match self.instance() {
            Ok(instance) => instance.route_batch(&views, bodies),
            Err(e) => return fail_all(e),
        };
        let checked = routed.and_then(|all| {
            all.iter().try_for_each(|ids| self.check_output(ids))?;
            Ok(all)
        });
        match checked {
            Ok(all) => {
                self.consecutive_failures = 0;
                if let Some(cache) = &mut self.cache {
                    for (&i, ids) in indexes.iter().zip(&all) {
                        cache.insert(&msgs[i].routing_key, ids);
                    }
                }
                all.into_iter().map(Ok).collect()
            }
            Err(failure) if indexes.len() == 1 => fail_all(self.fail(failure)),
            Err(failure) => {
                // Not counted: the one-by-one calls below count the culprit.
                tracing::debug!(exchange = %self.name, reason = %failure.reason, "batch failed; routing its messages one by one");
                self.instance = None;
                indexes
                    .iter()
                    .map(|&i| {
                        let mut out = Vec::new();
                        self.route_one(msgs[i], &mut out).map(|()| out)
                    })
                    .collect()
            }
        }
    }
}

impl Exchange for PluginExchange {
    fn route_batch(&mut self, msgs: &[&Message]) -> Vec<Result<Vec<BindingId>, ExchangeError>> {
        // The inherent method: one `route-batch` call into the plugin per chunk.
        PluginExchange::route_batch(self, msgs)
    }

    fn validate_binding(&mut self, key: &str, arguments: &Headers) -> Result<(), ExchangeError> {
        self.check_in()?;
        let arguments = convert::headers(arguments);
        match self.instance()?.validate_binding(key, &arguments) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(reason)) => Err(ExchangeError::InvalidBinding(reason)),
            Err(failure) => Err(self.fail(failure)),
        }
    }

    fn bind(&mut self, id: BindingId, key: &str, arguments: &Headers) -> Result<(), ExchangeError> {
        self.check_in()?;
        let arguments = convert::headers(arguments);
        match self.instance()?.bind(id, key, &arguments) {
            Ok(Ok(())) => {
                self.bindings.insert(
                    id,
                    BoundKey {
                        key: key.to_owned(),
                        arguments,
                    },
                );
                if let Some(cache) = &mut self.cache {
                    cache.clear();
                }
                self.consecutive_failures = 0;
                Ok(())
            }
            Ok(Err(reason)) => Err(ExchangeError::InvalidBinding(reason)),
            Err(failure) => Err(self.fail(failure)),
        }
    }

    /// Always succeeds for the broker: the binding is forgotten host-side even if the
    /// plugin fails, and a failed instance is replaced by one without it.
    fn unbind(&mut self, id: BindingId) -> Result<(), ExchangeError> {
        let known = self.bindings.remove(&id).is_some();
        if let Some(cache) = &mut self.cache {
            cache.clear();
        }
        if !known || self.check_in().is_err() {
            return Ok(());
        }
        if let Some(instance) = self.instance.as_mut()
            && let Err(failure) = instance.unbind(id)
        {
            self.fail(failure);
        }
        Ok(())
    }

    fn route(&mut self, msg: &Message, out: &mut Vec<BindingId>) -> Result<(), ExchangeError> {
        self.check_in()?;
        self.stats.record_messages(1);
        self.route_one(msg, out)
    }
}
