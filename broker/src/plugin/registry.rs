//! The plugin host: one engine, the named exchange types, and the live exchanges' controls.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};

use bytes::Bytes;
use wasmtime::component::Linker;
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::bundled;
use super::exchange::{ExchangeControl, PluginExchange};
use super::handler::HandlerRegistry;
use super::host_state::HostState;
use super::limits::Limits;
use super::loader::{self, LoadError, LoadedPlugin, PluginInfo, PluginSource};
use super::log_ring::{LogLine, PluginLogs};
use super::prepared::Prepared;
pub use super::prepared::PreparedPlugin;
use super::stats::{PluginStats, StatsSnapshot};
use super::trial::Trial;
use crate::exchange::{Exchange, ExchangeError, ExchangeTypes};
use crate::message::Headers;

/// SHA-256 of a plugin's bytes, hex: its identity in versions and the artifact cache.
pub fn content_hash(wasm: &[u8]) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(wasm)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Makes the calling thread yield to the broker's other threads (nice 10).
pub(crate) fn lower_thread_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: setpriority with PRIO_PROCESS and a thread id only changes that thread's
    // nice value; failure (e.g. a seccomp filter) just leaves it as it was.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 10);
    }
}

/// Why the plugin host could not start.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("cannot configure the Wasm engine: {0}")]
    Engine(String),
    #[error("cannot start the plugin deadline thread: {0}")]
    EpochThread(#[from] std::io::Error),
    #[error("bundled plugin `{name}` failed to load: {source}")]
    Bundled { name: String, source: LoadError },
}

/// One exchange type: its current plugin version and every version's counters.
pub(crate) struct PluginSlot {
    current: RwLock<Arc<LoadedPlugin>>,
    /// The version on trial (shadow or canary), if any; changed under `current`'s write
    /// lock with a generation bump, like `current`.
    trial: RwLock<Option<Arc<Trial>>>,
    /// Bumped on redeploy; exchanges compare it on every call (one atomic load).
    generation: AtomicU64,
    /// Counters by version, kept after a swap (and reused by a rollback to the version).
    version_stats: Mutex<std::collections::BTreeMap<u64, Arc<PluginStats>>>,
}

impl PluginSlot {
    pub fn current(&self) -> (Arc<LoadedPlugin>, u64) {
        let current = self.current.read().expect("plugin slot lock poisoned");
        (current.clone(), self.generation.load(Ordering::Acquire))
    }

    /// The current version, the version on trial and the generation they belong to.
    pub fn current_and_trial(&self) -> (Arc<LoadedPlugin>, Option<Arc<Trial>>, u64) {
        let current = self.current.read().expect("plugin slot lock poisoned");
        let trial = self
            .trial
            .read()
            .expect("plugin slot lock poisoned")
            .clone();
        let generation = self.generation.load(Ordering::Acquire);
        (current.clone(), trial, generation)
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Makes `plugin` current; with `end_trial`, in the same step the version on trial
    /// stops (a promotion: each exchange moves from one to the other at one message).
    fn replace(&self, mut plugin: LoadedPlugin, end_trial: bool) {
        plugin.stats = self.stats_of(plugin.info.version);
        let mut current = self.current.write().expect("plugin slot lock poisoned");
        *current = Arc::new(plugin);
        if end_trial {
            *self.trial.write().expect("plugin slot lock poisoned") = None;
        }
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Starts (`Some`) or stops (`None`) a version on trial.
    pub(super) fn set_trial(&self, trial: Option<Arc<Trial>>) {
        let _current = self.current.write().expect("plugin slot lock poisoned");
        *self.trial.write().expect("plugin slot lock poisoned") = trial;
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    pub(super) fn trial(&self) -> Option<Arc<Trial>> {
        self.trial
            .read()
            .expect("plugin slot lock poisoned")
            .clone()
    }

    pub(super) fn stats_of(&self, version: u64) -> Arc<PluginStats> {
        let mut all = self
            .version_stats
            .lock()
            .expect("plugin slot lock poisoned");
        all.entry(version).or_default().clone()
    }

    fn version_snapshots(&self) -> Vec<(u64, StatsSnapshot)> {
        let all = self
            .version_stats
            .lock()
            .expect("plugin slot lock poisoned");
        all.iter()
            .map(|(v, stats)| (*v, stats.snapshot()))
            .collect()
    }

    fn total(&self) -> StatsSnapshot {
        self.version_snapshots()
            .iter()
            .fold(StatsSnapshot::default(), |sum, (_, s)| sum.merged(s))
    }
}

struct HostInner {
    engine: Engine,
    linker: Linker<HostState>,
    limits: Limits,
    types: RwLock<HashMap<String, Arc<PluginSlot>>>,
    exchanges: Mutex<HashMap<String, Weak<ExchangeControl>>>,
    /// Keeps the engine's epoch ticking while the host lives.
    _epoch: Option<Arc<()>>,
    /// Handler plugins (consumer side), a namespace shared with exchange types.
    handlers: HandlerRegistry,
    /// Every plugin's recent log lines.
    logs: PluginLogs,
}

/// The Wasm plugin host and registry of exchange types. Cheap to clone (shared state).
#[derive(Clone)]
pub struct PluginHost {
    inner: Arc<HostInner>,
}

fn engine(limits: &Limits) -> Result<Engine, HostError> {
    let mut config = Config::new();
    config.consume_fuel(limits.meter_fuel);
    config.epoch_interruption(limits.call_deadline.is_some());
    if let Some(slots) = limits.pooled_instances {
        let mut pool = PoolingAllocationConfig::new();
        // A plugin component holds a few core instances (module, adapter shims) and one
        // memory; room for four per slot.
        pool.total_component_instances(slots)
            .total_core_instances(slots.saturating_mul(4))
            .total_memories(slots)
            .total_tables(slots.saturating_mul(4))
            .max_memory_size(limits.memory_bytes);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    }
    Engine::new(&config).map_err(|e| HostError::Engine(format!("{e:#}")))
}

impl PluginHost {
    /// A host with no exchange types; see [`PluginHost::with_standard_exchanges`].
    pub fn new(limits: Limits) -> Result<Self, HostError> {
        let engine = engine(&limits)?;
        let epoch = match limits.call_deadline {
            Some(_) => Some(super::epoch::register(&engine)?),
            None => None,
        };
        Ok(PluginHost {
            inner: Arc::new(HostInner {
                linker: loader::linker(&engine),
                handlers: HandlerRegistry::new(&engine),
                logs: PluginLogs::default(),
                engine,
                limits,
                types: RwLock::new(HashMap::new()),
                exchanges: Mutex::new(HashMap::new()),
                _epoch: epoch,
            }),
        })
    }

    /// A host with the bundled exchange types (`direct`, `topic`, `fanout`, `headers` and
    /// the extra ones in `plugins/`). Blocking (compiles eight small plugins, about a second
    /// in release, once per process): call at startup.
    pub fn with_standard_exchanges(limits: Limits) -> Result<Self, HostError> {
        let host = PluginHost::new(limits)?;
        host.load_standard_exchanges(&HashMap::new())?;
        Ok(host)
    }

    /// Registers the bundled types, taking compiled code from `artifacts` (by
    /// [`PluginHost::artifact_key`]) or from an earlier host of this process where it is
    /// there; returns the compiled code `artifacts` lacks, by key, for the caller to
    /// store. Blocking.
    pub fn load_standard_exchanges(
        &self,
        artifacts: &HashMap<String, Bytes>,
    ) -> Result<Vec<(String, Vec<u8>)>, HostError> {
        // Compiled once per process: tests and embedders start many hosts.
        static COMPILED: Mutex<Option<HashMap<String, Bytes>>> = Mutex::new(None);
        let mut compiled = Vec::new();
        for (name, wasm) in bundled::STANDARD_EXCHANGES {
            let key = self.artifact_key(&content_hash(wasm));
            let stored = artifacts.get(&key).cloned();
            let shared = stored.clone().or_else(|| {
                let cache = COMPILED.lock().expect("bundled cache lock poisoned");
                cache.as_ref()?.get(&key).cloned()
            });
            let source = PluginSource {
                name: name.to_owned(),
                version: 0,
                wasm: Bytes::from_static(wasm),
                compiled: shared.clone(),
            };
            let prepared =
                self.inner
                    .compile(&source, true)
                    .map_err(|source| HostError::Bundled {
                        name: name.to_owned(),
                        source,
                    })?;
            match (prepared.artifact(), shared) {
                (Some(artifact), _) => {
                    let mut cache = COMPILED.lock().expect("bundled cache lock poisoned");
                    let cache = cache.get_or_insert_default();
                    cache.insert(key.clone(), artifact.clone().into());
                    compiled.push((key, artifact));
                }
                (None, Some(shared)) if stored.is_none() => compiled.push((key, shared.to_vec())),
                (None, _) => {}
            }
            self.install(prepared);
        }
        Ok(compiled)
    }

    /// Compiles, validates and registers unversioned plugin `name` on a blocking thread
    /// (call it inside a Tokio runtime); exchanges of type `name` can be declared
    /// afterwards. Loading an existing custom name redeploys it: live exchanges move to the
    /// new version at their next call (if it accepts their bindings).
    pub async fn load(&self, name: &str, bytes: impl Into<Bytes>) -> Result<PluginInfo, LoadError> {
        let prepared = self
            .compile(PluginSource {
                name: name.to_owned(),
                version: 0,
                wasm: bytes.into(),
                compiled: None,
            })
            .await?;
        Ok(self.install(prepared))
    }

    /// [`PluginHost::load`] on the calling thread (startup, tests).
    pub fn load_blocking(&self, name: &str, bytes: &[u8]) -> Result<PluginInfo, LoadError> {
        let source = PluginSource {
            name: name.to_owned(),
            version: 0,
            wasm: Bytes::copy_from_slice(bytes),
            compiled: None,
        };
        let prepared = self.inner.compile(&source, false)?;
        Ok(self.install(prepared))
    }

    /// Compiles (or takes from `source.compiled`) and validates a plugin version on a
    /// blocking thread, without making it current: the deploy path stores the version
    /// first, then [`PluginHost::install`]s it.
    pub async fn compile(&self, source: PluginSource) -> Result<PreparedPlugin, LoadError> {
        let inner = self.inner.clone();
        let (done, prepared) = tokio::sync::oneshot::channel();
        // A thread of its own at a lower priority: compiling takes a core for up to
        // hundreds of milliseconds, and routing must not wait for it on a small machine.
        std::thread::Builder::new()
            .name("plugin-compile".into())
            .spawn(move || {
                lower_thread_priority();
                let _ = done.send(inner.compile(&source, false));
            })
            .map_err(|e| LoadError::Compile(format!("cannot start a compile thread: {e}")))?;
        prepared
            .await
            .map_err(|_| LoadError::Compile("the compile thread panicked".into()))?
    }

    /// [`PluginHost::compile`] on the calling thread (startup).
    pub fn compile_blocking(&self, source: &PluginSource) -> Result<PreparedPlugin, LoadError> {
        self.inner.compile(source, false)
    }

    /// Makes a prepared version current: new exchanges use it, live ones move to it at
    /// their next call.
    pub fn install(&self, prepared: PreparedPlugin) -> PluginInfo {
        self.inner.install(prepared, false)
    }

    /// [`PluginHost::install`] that also ends the type's trial in the same step: the
    /// promotion of the version on trial.
    pub fn install_ending_trial(&self, prepared: PreparedPlugin) -> PluginInfo {
        self.inner.install(prepared, true)
    }

    /// The artifact-cache key of the plugin with content hash `hash`: compiled code is
    /// only reusable by an engine with the same version and settings.
    pub fn artifact_key(&self, hash: &str) -> String {
        use std::hash::Hash;
        // SHA-256 rather than std's hasher, whose algorithm may change between releases.
        struct Sha(sha2::Sha256);
        impl std::hash::Hasher for Sha {
            fn write(&mut self, bytes: &[u8]) {
                sha2::Digest::update(&mut self.0, bytes);
            }
            fn finish(&self) -> u64 {
                unreachable!("only the digest is read")
            }
        }
        let mut hasher = Sha(Default::default());
        self.inner
            .engine
            .precompile_compatibility_hash()
            .hash(&mut hasher);
        let engine: String = sha2::Digest::finalize(hasher.0)[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        format!("{engine}-{hash}")
    }

    /// The registered exchange types, by name.
    pub fn plugins(&self) -> Vec<PluginInfo> {
        let types = self.inner.types.read().expect("registry lock poisoned");
        let mut infos: Vec<PluginInfo> = types
            .values()
            .map(|slot| slot.current().0.info.clone())
            .collect();
        infos.sort_by(|a, b| a.name.cmp(&b.name));
        infos
    }

    /// The running version of plugin `name`.
    pub fn info(&self, name: &str) -> Option<PluginInfo> {
        self.slot(name).map(|slot| slot.current().0.info.clone())
    }

    /// The counters of exchange type `name`, all versions together.
    pub fn stats(&self, name: &str) -> Option<StatsSnapshot> {
        self.slot(name).map(|slot| slot.total())
    }

    /// The counters of each version of exchange type `name` that ran since startup.
    pub fn version_stats(&self, name: &str) -> Vec<(u64, StatsSnapshot)> {
        match self.slot(name) {
            Some(slot) => slot.version_snapshots(),
            None => self.inner.handlers.version_stats(name),
        }
    }

    /// The counters of every version of every registered plugin (exchanges and handlers)
    /// that ran since startup, by name then version.
    pub fn all_stats(&self) -> Vec<(String, u64, StatsSnapshot)> {
        let types = self.inner.types.read().expect("registry lock poisoned");
        let mut all: Vec<(String, u64, StatsSnapshot)> = types
            .iter()
            .flat_map(|(name, slot)| {
                let versions = slot.version_snapshots().into_iter();
                versions.map(|(version, stats)| (name.clone(), version, stats))
            })
            .collect();
        drop(types);
        all.extend(self.inner.handlers.all_version_stats());
        all.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
        all
    }

    /// Removes custom plugin `name` (an exchange type or a handler): no new exchange of
    /// that type can be declared, no handler of that name attached. Live exchanges keep
    /// running the version they have until they are deleted. Returns false for unknown and
    /// bundled plugins.
    pub fn unload(&self, name: &str) -> bool {
        if bundled::is_standard(name) {
            return false;
        }
        let mut types = self.inner.types.write().expect("registry lock poisoned");
        let exchange = types.remove(name).is_some();
        exchange | self.inner.handlers.remove(name)
    }

    /// Takes exchange `exchange` out of quarantine (applied at its next call, with a fresh
    /// instance). Returns false if no live plugin exchange has that name.
    pub fn reset(&self, exchange: &str) -> bool {
        match self.control(exchange) {
            Some(control) => {
                control.request_reset();
                true
            }
            None => false,
        }
    }

    /// Takes every live exchange of plugin `plugin` out of quarantine (each starts a fresh
    /// instance, its failure history forgotten, at its next call). Returns the names of
    /// those that were quarantined.
    pub fn reset_plugin(&self, plugin: &str) -> Vec<String> {
        let exchanges = self.inner.exchanges.lock().expect("registry lock poisoned");
        let mut lifted: Vec<String> = exchanges
            .iter()
            .filter_map(|(name, control)| Some((name, control.upgrade()?)))
            .filter(|(_, control)| control.plugin() == plugin)
            .filter_map(|(name, control)| {
                let was = control.is_quarantined();
                control.request_reset();
                was.then(|| name.clone())
            })
            .collect();
        lifted.sort();
        lifted
    }

    /// Whether exchange `exchange` is quarantined (`None`: no such live plugin exchange).
    pub fn is_quarantined(&self, exchange: &str) -> Option<bool> {
        self.control(exchange).map(|c| c.is_quarantined())
    }

    /// Since when (ms since the Unix epoch) and why exchange `exchange` is quarantined.
    pub fn quarantine(&self, exchange: &str) -> Option<(u64, String)> {
        self.control(exchange)?.quarantine()
    }

    /// Like [`ExchangeTypes::create`], returning the concrete type (for `route_batch`).
    pub fn create_exchange(
        &self,
        type_name: &str,
        exchange: &str,
        arguments: &Headers,
    ) -> Result<PluginExchange, ExchangeError> {
        let slot = self
            .slot(type_name)
            .ok_or_else(|| ExchangeError::UnknownType(type_name.to_owned()))?;
        let control = Arc::new(ExchangeControl::new(type_name));
        let created = PluginExchange::new(
            slot,
            exchange,
            arguments,
            &self.inner.limits,
            control.clone(),
        )?;
        let mut exchanges = self.inner.exchanges.lock().expect("registry lock poisoned");
        exchanges.retain(|_, control| control.strong_count() > 0);
        exchanges.insert(exchange.to_owned(), Arc::downgrade(&control));
        Ok(created)
    }

    /// Plugin `name`'s log lines numbered above `after`, at most the newest `limit`
    /// (`None`: it never logged a line since startup).
    pub fn logs(&self, name: &str, after: u64, limit: usize) -> Option<Vec<LogLine>> {
        Some(self.inner.logs.get(name)?.since(after, limit))
    }

    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    pub(crate) fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    /// Where plugin `name`'s instances keep their log lines.
    pub(super) fn log_ring(&self, name: &str) -> Arc<super::log_ring::LogRing> {
        self.inner.logs.ring(name)
    }

    pub(crate) fn handler_registry(&self) -> &HandlerRegistry {
        &self.inner.handlers
    }

    pub(super) fn slot(&self, name: &str) -> Option<Arc<PluginSlot>> {
        let types = self.inner.types.read().expect("registry lock poisoned");
        types.get(name).cloned()
    }

    fn control(&self, exchange: &str) -> Option<Arc<ExchangeControl>> {
        let exchanges = self.inner.exchanges.lock().expect("registry lock poisoned");
        exchanges.get(exchange).and_then(Weak::upgrade)
    }
}

impl HostInner {
    fn compile(&self, source: &PluginSource, bundled: bool) -> Result<PreparedPlugin, LoadError> {
        if !bundled && bundled::is_standard(&source.name) {
            return Err(LoadError::ReservedName(source.name.clone()));
        }
        let name = source.name.as_str();
        // Not an exchange: maybe a handler (compiled a second time; deploys are rare).
        let plugin = match loader::load(&self.engine, &self.linker, &self.limits, source, bundled) {
            Err(LoadError::NotAnExchange) => {
                if self
                    .types
                    .read()
                    .expect("registry lock poisoned")
                    .contains_key(name)
                {
                    return Err(LoadError::KindChanged(name.to_owned()));
                }
                let handler = self
                    .handlers
                    .compile(&self.engine, &self.limits, source, bundled)?;
                return Ok(PreparedPlugin {
                    plugin: Prepared::Handler(handler),
                });
            }
            loaded => loaded?,
        };
        if self.handlers.contains(name) {
            return Err(LoadError::KindChanged(name.to_owned()));
        }
        Ok(PreparedPlugin {
            plugin: Prepared::Exchange(plugin),
        })
    }

    fn install(&self, prepared: PreparedPlugin, end_trial: bool) -> PluginInfo {
        let mut plugin = match prepared.plugin {
            Prepared::Exchange(plugin) => plugin,
            Prepared::Handler(mut handler) => {
                handler.log = self.logs.ring(&handler.info().name);
                return self.handlers.install(handler, &self.limits);
            }
        };
        plugin.log = self.logs.ring(&plugin.info.name);
        let info = plugin.info.clone();
        let mut types = self.types.write().expect("registry lock poisoned");
        match types.get(&info.name) {
            Some(slot) => slot.replace(plugin, end_trial),
            None => {
                let stats = Arc::new(PluginStats::default());
                plugin.stats = stats.clone();
                let slot = PluginSlot {
                    current: RwLock::new(Arc::new(plugin)),
                    trial: RwLock::new(None),
                    generation: AtomicU64::new(0),
                    version_stats: Mutex::new([(info.version, stats)].into()),
                };
                types.insert(info.name.clone(), Arc::new(slot));
            }
        }
        tracing::debug!(plugin = %info.name, version = info.version, abi = %info.abi_version, "exchange plugin installed");
        info
    }
}

impl ExchangeTypes for PluginHost {
    fn create(
        &self,
        type_name: &str,
        exchange: &str,
        arguments: &Headers,
    ) -> Result<Box<dyn Exchange>, ExchangeError> {
        Ok(Box::new(
            self.create_exchange(type_name, exchange, arguments)?,
        ))
    }
}
