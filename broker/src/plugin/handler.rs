//! Handler plugins: loading, the registry of handler names, and one live instance.
//!
//! A handler is a component exporting `broker:plugin/handler`. The router runs it for the
//! messages of a queue (see `router::handlers`); this module only knows how to compile it,
//! instantiate it with an attachment's configuration and call `handle` under the same
//! limits as exchanges (fuel, time, memory). A failed call discards the instance.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use bytes::Bytes;
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Engine, Store};

use super::bundled;
use super::handler_bindings::{
    HANDLER_INTERFACE, HandlerPlugin, HandlerPluginPre, LogHost, LogLevel, PublishHost, wit,
};
use super::host_state::HostState;
use super::instance::classify;
use super::limits::Limits;
use super::loader::{Capabilities, LoadError, PluginInfo, PluginSource, check_abi, check_source};
use super::registry::PluginHost;
use super::stats::{PluginStats, StatsSnapshot};
use crate::message::Message;

mod convert;
use convert::{from_wit_headers, from_wit_properties, to_wit_headers, to_wit_properties};

/// Messages one `handle` call may publish...
pub const MAX_PUBLISHES_PER_CALL: usize = 100;
/// ...and their total body bytes.
pub const MAX_PUBLISH_BYTES_PER_CALL: usize = 4 << 20;

/// Why a handler could not be attached or started.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandlerError {
    #[error("no handler plugin `{0}`")]
    Unknown(String),
    #[error("`{0}` is an exchange plugin, not a handler")]
    NotAHandler(String),
    #[error("handler refused its configuration: {0}")]
    Config(String),
    #[error("handler plugin failed to start: {0}")]
    Failed(String),
}

/// What a handler decided, in broker types.
#[derive(Debug, Clone, PartialEq)]
pub enum HandlerOutcome {
    Ack,
    Retry(Option<u64>),
    Reject(String),
    Drop,
    Deliver(Box<Message>),
}

/// The result of one successful `handle` call: the outcome and what it published.
#[derive(Debug, Clone, PartialEq)]
pub struct Handled {
    pub outcome: HandlerOutcome,
    pub published: Vec<Message>,
}

/// One compiled handler version.
pub struct LoadedHandler {
    pre: HandlerPluginPre<HandlerState>,
    info: PluginInfo,
    /// This version's counters (kept by the slot across swaps and rollbacks).
    stats: Arc<PluginStats>,
    /// Where its instances keep their log lines (the registry's ring for its name).
    pub(super) log: Arc<super::log_ring::LogRing>,
}

impl LoadedHandler {
    pub fn info(&self) -> &PluginInfo {
        &self.info
    }
}

/// A handler name: its current version and counters that outlive versions.
pub struct HandlerSlot {
    name: Arc<str>,
    current: RwLock<Arc<LoadedHandler>>,
    /// Bumped on redeploy; live instances compare it before each call.
    generation: AtomicU64,
    /// Counters by version, kept after a swap (and reused by a rollback to the version).
    version_stats: std::sync::Mutex<std::collections::BTreeMap<u64, Arc<PluginStats>>>,
    limits: Limits,
}

impl HandlerSlot {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// All versions' counters together.
    pub fn stats(&self) -> StatsSnapshot {
        self.version_stats()
            .iter()
            .fold(StatsSnapshot::default(), |sum, (_, s)| sum.merged(s))
    }

    /// The counters of each version that ran since startup.
    pub fn version_stats(&self) -> Vec<(u64, StatsSnapshot)> {
        let all = self
            .version_stats
            .lock()
            .expect("handler slot lock poisoned");
        all.iter()
            .map(|(v, stats)| (*v, stats.snapshot()))
            .collect()
    }

    fn stats_of(&self, version: u64) -> Arc<PluginStats> {
        let mut all = self
            .version_stats
            .lock()
            .expect("handler slot lock poisoned");
        all.entry(version).or_default().clone()
    }

    /// A fresh instance of the current version, initialised for `queue` with `config`.
    pub fn instantiate(
        &self,
        queue: &str,
        config: &[(String, String)],
    ) -> Result<LiveHandler, HandlerError> {
        self.instantiate_active(queue, config).map_err(|(_, e)| e)
    }

    /// [`HandlerSlot::instantiate`], telling which version failed or refused `config`.
    pub fn instantiate_active(
        &self,
        queue: &str,
        config: &[(String, String)],
    ) -> Result<LiveHandler, (u64, HandlerError)> {
        let version = {
            let current = self.current.read().expect("handler slot lock poisoned");
            HandlerVersion {
                loaded: current.clone(),
                generation: self.generation(),
            }
        };
        self.instantiate_version(&version, queue, config)
            .map_err(|e| (version.version(), e))
    }

    /// A fresh instance of `version` (an instance's [`LiveHandler::handler_version`]), not
    /// necessarily the current one: an attachment that a newer version refused keeps
    /// running the version it has.
    pub fn instantiate_version(
        &self,
        version: &HandlerVersion,
        queue: &str,
        config: &[(String, String)],
    ) -> Result<LiveHandler, HandlerError> {
        LiveHandler::new(
            &self.name,
            &self.limits,
            &version.loaded,
            version.generation,
            queue,
            config,
        )
    }
}

/// One version of a handler, as an instance of it runs: a new instance of the same
/// version can be made from it ([`HandlerSlot::instantiate_version`]).
#[derive(Clone)]
pub struct HandlerVersion {
    loaded: Arc<LoadedHandler>,
    generation: u64,
}

impl HandlerVersion {
    /// The deployed version number (0 for bundled handlers and unversioned files).
    pub fn version(&self) -> u64 {
        self.loaded.info.version
    }
}

impl std::fmt::Debug for HandlerVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HandlerVersion")
            .field("version", &self.version())
            .field("generation", &self.generation)
            .finish()
    }
}

/// The handler names known to a [`PluginHost`]; bundled ones compile on first use.
pub(crate) struct HandlerRegistry {
    linker: Linker<HandlerState>,
    slots: RwLock<HashMap<String, Arc<HandlerSlot>>>,
}

impl HandlerRegistry {
    pub fn new(engine: &Engine) -> Self {
        let mut linker = Linker::new(engine);
        HandlerPlugin::add_to_linker::<HandlerState, HasSelf<HandlerState>>(&mut linker, |s| s)
            .expect("the host interfaces are added once to a fresh linker");
        HandlerRegistry {
            linker,
            slots: RwLock::new(HashMap::new()),
        }
    }

    pub fn contains(&self, name: &str) -> bool {
        bundled::is_standard_handler(name)
            || self
                .slots
                .read()
                .expect("handler registry lock poisoned")
                .contains_key(name)
    }

    /// Forgets custom handler `name`; false for unknown and bundled ones.
    pub fn remove(&self, name: &str) -> bool {
        let mut slots = self.slots.write().expect("handler registry lock poisoned");
        !bundled::is_standard_handler(name) && slots.remove(name).is_some()
    }

    /// Compiles and checks handler `source` without making it current. Blocking.
    pub fn compile(
        &self,
        engine: &Engine,
        limits: &Limits,
        source: &PluginSource,
        bundled: bool,
    ) -> Result<LoadedHandler, LoadError> {
        if !bundled && bundled::is_standard_handler(&source.name) {
            return Err(LoadError::ReservedName(source.name.clone()));
        }
        load(engine, &self.linker, limits, source, bundled)
    }

    /// Makes a prepared handler version current (a new name, or a redeploy: live
    /// instances move to it before their next call).
    pub fn install(&self, mut loaded: LoadedHandler, limits: &Limits) -> PluginInfo {
        let info = loaded.info.clone();
        let name = info.name.as_str();
        let mut slots = self.slots.write().expect("handler registry lock poisoned");
        match slots.get(name) {
            Some(slot) => {
                loaded.stats = slot.stats_of(info.version);
                *slot.current.write().expect("handler slot lock poisoned") = Arc::new(loaded);
                slot.generation.fetch_add(1, Ordering::AcqRel);
            }
            None => {
                let stats = Arc::new(PluginStats::default());
                loaded.stats = stats.clone();
                let slot = HandlerSlot {
                    name: name.into(),
                    current: RwLock::new(Arc::new(loaded)),
                    generation: AtomicU64::new(0),
                    version_stats: std::sync::Mutex::new([(info.version, stats)].into()),
                    limits: limits.clone(),
                };
                slots.insert(name.to_owned(), Arc::new(slot));
            }
        }
        tracing::debug!(plugin = name, version = info.version, abi = %info.abi_version, "handler plugin installed");
        info
    }

    /// The counters of each version of handler `name` (none before its first use).
    pub fn version_stats(&self, name: &str) -> Vec<(u64, StatsSnapshot)> {
        let slots = self.slots.read().expect("handler registry lock poisoned");
        slots
            .get(name)
            .map(|slot| slot.version_stats())
            .unwrap_or_default()
    }

    /// (name, version, counters) of every handler version that ran since startup.
    pub fn all_version_stats(&self) -> Vec<(String, u64, StatsSnapshot)> {
        let slots = self.slots.read().expect("handler registry lock poisoned");
        slots
            .iter()
            .flat_map(|(name, slot)| {
                let versions = slot.version_stats().into_iter();
                versions.map(|(version, stats)| (name.clone(), version, stats))
            })
            .collect()
    }

    fn slot(&self, engine: &Engine, limits: &Limits, name: &str) -> Option<Arc<HandlerSlot>> {
        if let Some(slot) = self
            .slots
            .read()
            .expect("handler registry lock poisoned")
            .get(name)
        {
            return Some(slot.clone());
        }
        let (_, wasm) = bundled::STANDARD_HANDLERS
            .iter()
            .find(|(n, _)| *n == name)?;
        let source = PluginSource {
            name: name.to_owned(),
            version: 0,
            wasm: Bytes::from_static(wasm),
            compiled: None,
        };
        match self.compile(engine, limits, &source, true) {
            Ok(loaded) => {
                self.install(loaded, limits);
                self.slots
                    .read()
                    .expect("handler registry lock poisoned")
                    .get(name)
                    .cloned()
            }
            Err(e) => {
                tracing::error!(plugin = name, error = %e, "bundled handler failed to load");
                None
            }
        }
    }
}

impl PluginHost {
    /// Handler plugin `name` (compiling a bundled one on first use; blocking then).
    pub fn handler(&self, name: &str) -> Result<Arc<HandlerSlot>, HandlerError> {
        let registry = self.handler_registry();
        match registry.slot(self.engine(), self.limits(), name) {
            Some(slot) => Ok(slot),
            None if self.stats(name).is_some() => Err(HandlerError::NotAHandler(name.to_owned())),
            None => Err(HandlerError::Unknown(name.to_owned())),
        }
    }

    /// Whether `name` is a handler plugin (deployed, loaded or bundled).
    pub fn is_handler(&self, name: &str) -> bool {
        self.handler_registry().contains(name)
    }

    /// Every handler name: (name, bundled, counters once it has been used).
    pub fn handler_plugins(&self) -> Vec<(String, bool, Option<StatsSnapshot>)> {
        let registry = self.handler_registry();
        let slots = registry
            .slots
            .read()
            .expect("handler registry lock poisoned");
        let mut all: Vec<_> = slots
            .iter()
            .map(|(name, slot)| {
                let bundled = bundled::is_standard_handler(name);
                (name.clone(), bundled, Some(slot.stats()))
            })
            .collect();
        for (name, _) in bundled::STANDARD_HANDLERS {
            if !slots.contains_key(name) {
                all.push((name.to_owned(), true, None));
            }
        }
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }
}

/// Whether `bytes` compile to a component exporting the handler interface (the registry
/// asks after the exchange loader said "not an exchange").
fn load(
    engine: &Engine,
    linker: &Linker<HandlerState>,
    limits: &Limits,
    source: &PluginSource,
    bundled: bool,
) -> Result<LoadedHandler, LoadError> {
    let (name, bytes) = (source.name.as_str(), &source.wasm[..]);
    check_source(name, bytes, limits)?;
    let component =
        Component::from_binary(engine, bytes).map_err(|e| LoadError::Compile(format!("{e:#}")))?;
    let abi_version = check_abi(engine, &component, HANDLER_INTERFACE)?;
    let instance_pre = linker
        .instantiate_pre(&component)
        .map_err(|e| LoadError::Link(format!("{e:#}")))?;
    let pre = HandlerPluginPre::new(instance_pre).map_err(|e| LoadError::Link(format!("{e:#}")))?;
    let loaded = Arc::new(LoadedHandler {
        pre,
        stats: Arc::default(),
        log: Arc::default(),
        info: PluginInfo {
            name: name.to_owned(),
            abi_version,
            capabilities: Capabilities {
                key_only: false,
                reads_headers: true,
                reads_body: true,
            },
            size_bytes: bytes.len(),
            bundled,
            version: source.version,
            from_cache: false,
        },
    });
    super::samples::check_handler(&loaded, limits)?;
    Ok(Arc::into_inner(loaded).expect("the sample run keeps no instance"))
}

/// A handler's store: the memory limiter, log allowance and the call's publishes.
pub struct HandlerState {
    host: HostState,
    plugin: Arc<str>,
    queue: Arc<str>,
    outbox: Vec<Message>,
    outbox_bytes: usize,
}

impl LogHost for HandlerState {
    fn log(&mut self, level: LogLevel, text: String) {
        let is_error = matches!(level, LogLevel::Error);
        let Some(text) = self.host.admit_log(is_error, &text) else {
            return;
        };
        let (plugin, queue) = (&*self.plugin, &*self.queue);
        match level {
            LogLevel::Trace => tracing::trace!(plugin, queue, "{text}"),
            LogLevel::Debug => tracing::debug!(plugin, queue, "{text}"),
            LogLevel::Info => tracing::info!(plugin, queue, "{text}"),
            LogLevel::Warn => tracing::warn!(plugin, queue, "{text}"),
            LogLevel::Error => tracing::error!(plugin, queue, "{text}"),
        }
    }

    /// Handlers get the body inside the message; there is nothing to fetch.
    fn message_body(&mut self, _index: u32) -> Vec<u8> {
        Vec::new()
    }
}

impl wit::Host for HandlerState {}

impl PublishHost for HandlerState {
    fn publish(
        &mut self,
        exchange: String,
        routing_key: String,
        headers: Vec<wit::Header>,
        properties: wit::Properties,
        body: Vec<u8>,
    ) -> Result<(), String> {
        if self.outbox.len() >= MAX_PUBLISHES_PER_CALL {
            return Err(format!(
                "at most {MAX_PUBLISHES_PER_CALL} publishes per message"
            ));
        }
        if self.outbox_bytes + body.len() > MAX_PUBLISH_BYTES_PER_CALL {
            return Err(format!(
                "at most {MAX_PUBLISH_BYTES_PER_CALL} body bytes published per message"
            ));
        }
        if exchange.len() > 255 || routing_key.len() > 255 {
            return Err("exchange names and routing keys are at most 255 bytes".into());
        }
        self.outbox_bytes += body.len();
        self.outbox.push(Message {
            exchange,
            routing_key,
            headers: from_wit_headers(headers),
            properties: from_wit_properties(properties),
            body: Bytes::from(body),
        });
        Ok(())
    }
}

/// One instance of a handler version, initialised for one attachment.
pub struct LiveHandler {
    store: Store<HandlerState>,
    plugin: HandlerPlugin,
    loaded: Arc<LoadedHandler>,
    generation: u64,
    stats: Arc<PluginStats>,
}

impl LiveHandler {
    pub(crate) fn new(
        name: &Arc<str>,
        limits: &Limits,
        loaded: &Arc<LoadedHandler>,
        generation: u64,
        queue: &str,
        config: &[(String, String)],
    ) -> Result<Self, HandlerError> {
        let state = HandlerState {
            host: HostState::new(limits, name.clone(), queue.into()).with_log(loaded.log.clone()),
            plugin: name.clone(),
            queue: queue.into(),
            outbox: Vec::new(),
            outbox_bytes: 0,
        };
        let mut store = Store::new(loaded.pre.engine(), state);
        HostState::install(&mut store, |state| &mut state.host);
        loaded.stats.record_instantiation();
        arm_call(&mut store, true);
        let failed = |store: &Store<HandlerState>, e| {
            let failure = classify(&store.data().host, e);
            loaded.stats.record_failure(failure.kind);
            HandlerError::Failed(failure.reason)
        };
        let plugin = match loaded.pre.instantiate(&mut store) {
            Ok(plugin) => plugin,
            Err(e) => return Err(failed(&store, e)),
        };
        arm_call(&mut store, true);
        let init = plugin
            .broker_plugin_handler()
            .call_init(&mut store, queue, config);
        match init {
            Ok(Ok(())) => {}
            Ok(Err(reason)) => return Err(HandlerError::Config(reason)),
            Err(e) => return Err(failed(&store, e)),
        }
        Ok(LiveHandler {
            store,
            plugin,
            loaded: loaded.clone(),
            generation,
            stats: loaded.stats.clone(),
        })
    }

    /// The slot generation (plugin version) this instance runs.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The deployed version number this instance runs (0 for bundled handlers and
    /// unversioned files).
    pub fn version(&self) -> u64 {
        self.loaded.info.version
    }

    /// The version this instance runs, to make more instances of it.
    pub fn handler_version(&self) -> HandlerVersion {
        HandlerVersion {
            loaded: self.loaded.clone(),
            generation: self.generation,
        }
    }

    /// Runs `handle` on `msg`. A failure (trap, fuel, deadline, memory; the error says
    /// which) means the instance must not be used again.
    pub fn handle(&mut self, msg: &Message, delivery_count: u32) -> Result<Handled, String> {
        // The body travels inside the message: it widens the budget like a fetched body.
        self.store.data_mut().host.bodies.push(msg.body.clone());
        arm_call(&mut self.store, false);
        self.store.data_mut().host.bodies.clear();
        let view = wit::Message {
            exchange: msg.exchange.clone(),
            routing_key: msg.routing_key.clone(),
            headers: to_wit_headers(&msg.headers),
            properties: to_wit_properties(&msg.properties),
            body: msg.body.to_vec(),
            delivery_count,
        };
        let started = Instant::now();
        let result = self
            .plugin
            .broker_plugin_handler()
            .call_handle(&mut self.store, &view);
        self.stats.record_call(started.elapsed());
        self.stats.record_messages(1);
        let published = std::mem::take(&mut self.store.data_mut().outbox);
        let outcome = match result {
            Ok(outcome) => outcome,
            Err(e) => {
                let failure = classify(&self.store.data().host, e);
                self.stats.record_failure(failure.kind);
                return Err(failure.reason);
            }
        };
        let outcome = match outcome {
            wit::Outcome::Ack => HandlerOutcome::Ack,
            wit::Outcome::Retry(delay) => HandlerOutcome::Retry(delay),
            wit::Outcome::Reject(reason) => HandlerOutcome::Reject(reason),
            wit::Outcome::Drop => HandlerOutcome::Drop,
            wit::Outcome::Deliver(out) => HandlerOutcome::Deliver(Box::new(Message {
                exchange: msg.exchange.clone(),
                routing_key: out.routing_key,
                headers: from_wit_headers(out.headers),
                properties: from_wit_properties(out.properties),
                body: Bytes::from(out.body),
            })),
        };
        Ok(Handled { outcome, published })
    }
}

/// Fresh budget before a call: fuel, time, log allowance, empty outbox. The body is in
/// the message itself, so it widens the budget like an exchange's fetched body.
/// `setup`: instantiation and `init`, which get the setup budget.
fn arm_call(store: &mut Store<HandlerState>, setup: bool) {
    let state = store.data_mut();
    state.outbox.clear();
    state.outbox_bytes = 0;
    match setup {
        true => HostState::arm_setup(store, |state| &mut state.host),
        false => HostState::arm(store, |state| &mut state.host),
    }
}
