//! The plugin host: one engine, the named exchange types, and the live exchanges' controls.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};

use bytes::Bytes;
use wasmtime::component::Linker;
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::bundled;
use super::epoch::EpochTicker;
use super::exchange::{ExchangeControl, PluginExchange};
use super::handler::HandlerRegistry;
use super::host_state::HostState;
use super::limits::Limits;
use super::loader::{self, LoadError, LoadedPlugin, PluginInfo};
use super::stats::{PluginStats, StatsSnapshot};
use crate::exchange::{Exchange, ExchangeError, ExchangeTypes};
use crate::message::Headers;

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

/// One exchange type: its current plugin version and counters that outlive versions.
pub(crate) struct PluginSlot {
    current: RwLock<Arc<LoadedPlugin>>,
    /// Bumped on redeploy; exchanges compare it on every call (one atomic load).
    generation: AtomicU64,
    pub stats: Arc<PluginStats>,
}

impl PluginSlot {
    pub fn current(&self) -> (Arc<LoadedPlugin>, u64) {
        let current = self.current.read().expect("plugin slot lock poisoned");
        (current.clone(), self.generation.load(Ordering::Acquire))
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn replace(&self, plugin: LoadedPlugin) {
        let mut current = self.current.write().expect("plugin slot lock poisoned");
        *current = Arc::new(plugin);
        self.generation.fetch_add(1, Ordering::AcqRel);
    }
}

struct HostInner {
    engine: Engine,
    linker: Linker<HostState>,
    limits: Limits,
    types: RwLock<HashMap<String, Arc<PluginSlot>>>,
    exchanges: Mutex<HashMap<String, Weak<ExchangeControl>>>,
    _epoch: Option<EpochTicker>,
    /// Handler plugins (consumer side), a namespace shared with exchange types.
    handlers: HandlerRegistry,
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
            Some(deadline) => Some(EpochTicker::start(engine.clone(), deadline)?),
            None => None,
        };
        Ok(PluginHost {
            inner: Arc::new(HostInner {
                linker: loader::linker(&engine),
                handlers: HandlerRegistry::new(&engine),
                engine,
                limits,
                types: RwLock::new(HashMap::new()),
                exchanges: Mutex::new(HashMap::new()),
                _epoch: epoch,
            }),
        })
    }

    /// A host with the bundled `direct`, `topic`, `fanout` and `headers` types. Blocking
    /// (compiles four small plugins, tens of milliseconds in release): call at startup.
    pub fn with_standard_exchanges(limits: Limits) -> Result<Self, HostError> {
        let host = PluginHost::new(limits)?;
        for (name, wasm) in bundled::STANDARD_EXCHANGES {
            host.inner
                .load(name, wasm, true)
                .map_err(|source| HostError::Bundled {
                    name: name.to_owned(),
                    source,
                })?;
        }
        Ok(host)
    }

    /// Compiles and registers plugin `name` on a blocking thread (call it inside a Tokio
    /// runtime); exchanges of type `name` can be declared afterwards. Loading an existing custom name redeploys it: live
    /// exchanges move to the new version at their next call (if it accepts their bindings).
    pub async fn load(&self, name: &str, bytes: impl Into<Bytes>) -> Result<PluginInfo, LoadError> {
        let inner = self.inner.clone();
        let name = name.to_owned();
        let bytes = bytes.into();
        tokio::task::spawn_blocking(move || inner.load(&name, &bytes, false))
            .await
            .map_err(|e| LoadError::Compile(format!("compilation task failed: {e}")))?
    }

    /// [`PluginHost::load`] on the calling thread (startup, tests).
    pub fn load_blocking(&self, name: &str, bytes: &[u8]) -> Result<PluginInfo, LoadError> {
        self.inner.load(name, bytes, false)
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

    /// The counters of exchange type `name`.
    pub fn stats(&self, name: &str) -> Option<StatsSnapshot> {
        self.slot(name).map(|slot| slot.stats.snapshot())
    }

    /// The counters of every registered exchange type, by name.
    pub fn all_stats(&self) -> Vec<(String, StatsSnapshot)> {
        let types = self.inner.types.read().expect("registry lock poisoned");
        let mut all: Vec<(String, StatsSnapshot)> = types
            .iter()
            .map(|(name, slot)| (name.clone(), slot.stats.snapshot()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// Removes custom type `name`: no new exchanges of that type can be declared. Live
    /// exchanges keep running the version they have until they are deleted. Returns false
    /// for unknown and standard types.
    pub fn unload(&self, name: &str) -> bool {
        if bundled::is_standard(name) {
            return false;
        }
        let mut types = self.inner.types.write().expect("registry lock poisoned");
        types.remove(name).is_some()
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

    /// Whether exchange `exchange` is quarantined (`None`: no such live plugin exchange).
    pub fn is_quarantined(&self, exchange: &str) -> Option<bool> {
        self.control(exchange).map(|c| c.is_quarantined())
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
        let control = Arc::new(ExchangeControl::default());
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

    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    pub(crate) fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    pub(crate) fn handler_registry(&self) -> &HandlerRegistry {
        &self.inner.handlers
    }

    fn slot(&self, name: &str) -> Option<Arc<PluginSlot>> {
        let types = self.inner.types.read().expect("registry lock poisoned");
        types.get(name).cloned()
    }

    fn control(&self, exchange: &str) -> Option<Arc<ExchangeControl>> {
        let exchanges = self.inner.exchanges.lock().expect("registry lock poisoned");
        exchanges.get(exchange).and_then(Weak::upgrade)
    }
}

impl HostInner {
    fn load(&self, name: &str, bytes: &[u8], bundled: bool) -> Result<PluginInfo, LoadError> {
        if !bundled && bundled::is_standard(name) {
            return Err(LoadError::ReservedName(name.to_owned()));
        }
        let loaded = loader::load(
            &self.engine,
            &self.linker,
            &self.limits,
            name,
            bytes,
            bundled,
        );
        // Not an exchange: maybe a handler (compiled a second time; deploys are rare).
        let plugin = match loaded {
            Err(LoadError::NotAnExchange) => {
                if self
                    .types
                    .read()
                    .expect("registry lock poisoned")
                    .contains_key(name)
                {
                    return Err(LoadError::KindChanged(name.to_owned()));
                }
                return self
                    .handlers
                    .load(&self.engine, &self.limits, name, bytes, bundled);
            }
            loaded => loaded?,
        };
        if self.handlers.contains(name) {
            return Err(LoadError::KindChanged(name.to_owned()));
        }
        let info = plugin.info.clone();
        let mut types = self.types.write().expect("registry lock poisoned");
        match types.get(name) {
            Some(slot) => slot.replace(plugin),
            None => {
                let slot = PluginSlot {
                    current: RwLock::new(Arc::new(plugin)),
                    generation: AtomicU64::new(0),
                    stats: Arc::default(),
                };
                types.insert(name.to_owned(), Arc::new(slot));
            }
        }
        tracing::info!(plugin = name, abi = %info.abi_version, "exchange plugin loaded");
        Ok(info)
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
