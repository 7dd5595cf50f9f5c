//! Turning plugin bytes into a ready-to-instantiate plugin: size and format checks,
//! compilation, ABI version check, linking, and a probe instance for its capabilities.

use std::sync::Arc;

use bytes::Bytes;
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Engine, Store};

use super::bindings::{
    ABI_MAJOR_VERSION, ABI_PACKAGE, EXCHANGE_INTERFACE, ExchangePlugin, ExchangePluginPre, wit,
};
use super::host_state::HostState;
use super::limits::Limits;
use super::stats::PluginStats;

/// Why a plugin could not be loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoadError {
    #[error("invalid plugin name `{0}`: use 1-64 characters from a-z, 0-9, `.`, `_`, `-`")]
    InvalidName(String),
    #[error("`{0}` is a standard exchange type and cannot be replaced")]
    ReservedName(String),
    #[error("plugin is {size} bytes, more than the limit of {limit}")]
    TooLarge { size: usize, limit: usize },
    #[error(
        "not a component: this is a core Wasm module; build the plugin with the plugin SDK \
         (it links with `wasm-component-ld`)"
    )]
    CoreModule,
    #[error("plugin does not compile: {0}")]
    Compile(String),
    #[error(
        "plugin was built for plugin ABI {found}, this broker supports {ABI_PACKAGE}@{supported}.x; \
         rebuild it with a matching broker-plugin-sdk"
    )]
    IncompatibleAbi { found: String, supported: u64 },
    #[error(
        "not a plugin: it exports no `{EXCHANGE_INTERFACE}` or `broker:plugin/handler` interface"
    )]
    NotAnExchange,
    #[error("plugin needs imports this broker does not provide (plugins get no WASI): {0}")]
    Link(String),
    #[error("plugin failed while being probed: {0}")]
    Probe(String),
    /// A deploy-time sample run failed (sample 0: setting up the run).
    #[error("plugin refused: on deploy sample {sample} ({description}) it failed: {reason}")]
    Sample {
        sample: usize,
        description: String,
        reason: String,
    },
    /// Its capabilities say it routes on the routing key alone, but it reads more.
    #[error("plugin refused: {0}")]
    KeyOnlyReadsMore(String),
    #[error(
        "`{0}` is already a plugin of the other kind (exchange vs handler); choose another name"
    )]
    KindChanged(String),
}

/// What the host may assume about a plugin (from its `get-capabilities` export).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Capabilities {
    pub key_only: bool,
    pub reads_headers: bool,
    pub reads_body: bool,
}

/// A loaded plugin as the registry reports it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PluginInfo {
    /// The exchange type name it is registered under.
    pub name: String,
    /// The ABI version it was built against, e.g. `1.0.0`.
    pub abi_version: String,
    pub capabilities: Capabilities,
    pub size_bytes: usize,
    /// Whether it is one of the standard types bundled with the broker.
    pub bundled: bool,
    /// The deployed version (0 for bundled and unversioned plugins).
    pub version: u64,
    /// Whether its compiled code came from the artifact cache rather than a compilation.
    pub from_cache: bool,
}

/// One compiled, linked plugin version; instances of exchanges are made from it.
pub struct LoadedPlugin {
    pub info: PluginInfo,
    pub(crate) pre: ExchangePluginPre<HostState>,
    pub(crate) name: Arc<str>,
    /// This version's counters (kept by the registry across swaps and rollbacks).
    pub(crate) stats: Arc<PluginStats>,
    /// Where its instances keep their log lines (the registry's ring for its name).
    pub(crate) log: Arc<super::log_ring::LogRing>,
    /// The compiled code, for the artifact cache.
    pub(crate) component: Component,
    /// Whether `component` was compiled now rather than taken from the artifact cache.
    pub(crate) freshly_compiled: bool,
}

/// What to load: the plugin's bytes and, when the artifact cache has one, their compiled
/// form (which must come from this broker's own store: deserializing runs native code).
#[derive(Debug, Clone)]
pub struct PluginSource {
    pub name: String,
    /// 0 for unversioned plugins.
    pub version: u64,
    pub wasm: Bytes,
    pub compiled: Option<Bytes>,
}

pub(crate) fn validate_name(name: &str) -> Result<(), LoadError> {
    let ok = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(LoadError::InvalidName(name.to_owned()))
    }
}

/// The checks before compiling: a valid name, the size limit, a component (not a module).
pub(super) fn check_source(name: &str, bytes: &[u8], limits: &Limits) -> Result<(), LoadError> {
    validate_name(name)?;
    if bytes.len() > limits.max_module_bytes {
        return Err(LoadError::TooLarge {
            size: bytes.len(),
            limit: limits.max_module_bytes,
        });
    }
    // Core modules are layer 0 of the binary format, components layer 1.
    if bytes.len() >= 8 && bytes[..4] == *b"\0asm" && bytes[6..8] == [0, 0] {
        return Err(LoadError::CoreModule);
    }
    Ok(())
}

/// The version in `broker:plugin/<interface>@<version>`, if `item` is such a name.
fn abi_version(item: &str) -> Option<&str> {
    let rest = item.strip_prefix(ABI_PACKAGE)?.strip_prefix('/')?;
    Some(rest.split_once('@').map_or("", |(_, version)| version))
}

fn major(version: &str) -> Option<u64> {
    version.split('.').next()?.parse().ok()
}

/// Checks the ABI version of everything the component exports and imports from
/// `broker:plugin`, returning the version of `interface` (`NotAnExchange` when the
/// component does not export it).
pub(super) fn check_abi(
    engine: &Engine,
    component: &Component,
    interface: &str,
) -> Result<String, LoadError> {
    let ty = component.component_type();
    let exports: Vec<&str> = ty.exports(engine).map(|(name, _)| name).collect();
    let imports: Vec<&str> = ty.imports(engine).map(|(name, _)| name).collect();
    for name in exports.iter().chain(&imports) {
        if let Some(version) = abi_version(name)
            && major(version) != Some(ABI_MAJOR_VERSION)
        {
            return Err(LoadError::IncompatibleAbi {
                found: format!("{ABI_PACKAGE}@{version}"),
                supported: ABI_MAJOR_VERSION,
            });
        }
    }
    exports
        .iter()
        .find(|name| name.split('@').next() == Some(interface))
        .and_then(|name| abi_version(name))
        .map(str::to_owned)
        .ok_or(LoadError::NotAnExchange)
}

pub(crate) fn linker(engine: &Engine) -> Linker<HostState> {
    let mut linker = Linker::new(engine);
    ExchangePlugin::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |state| state)
        .expect("the host interface is added once to a fresh linker");
    linker
}

/// Compiles (or takes from the cache) and checks a plugin. Blocking: compilation takes
/// milliseconds to seconds.
pub(crate) fn load(
    engine: &Engine,
    linker: &Linker<HostState>,
    limits: &Limits,
    source: &PluginSource,
    bundled: bool,
) -> Result<LoadedPlugin, LoadError> {
    let (name, bytes) = (source.name.as_str(), &source.wasm[..]);
    check_source(name, bytes, limits)?;
    let cached = source.compiled.as_ref().and_then(|artifact| {
        // SAFETY: artifacts are only read from the broker's own store, where this host
        // wrote them after compiling; wasmtime checks they match this engine's settings.
        match unsafe { Component::deserialize(engine, artifact) } {
            Ok(component) => Some(component),
            Err(e) => {
                tracing::warn!(plugin = name, error = %e, "compiled artifact unusable; recompiling");
                None
            }
        }
    });
    let freshly_compiled = cached.is_none();
    let component = match cached {
        Some(component) => component,
        None => Component::from_binary(engine, bytes)
            .map_err(|e| LoadError::Compile(format!("{e:#}")))?,
    };
    let abi_version = check_abi(engine, &component, EXCHANGE_INTERFACE)?;
    let instance_pre = linker
        .instantiate_pre(&component)
        .map_err(|e| LoadError::Link(format!("{e:#}")))?;
    let pre =
        ExchangePluginPre::new(instance_pre).map_err(|e| LoadError::Link(format!("{e:#}")))?;
    let name: Arc<str> = name.into();
    let capabilities = probe(engine, &pre, limits, &name)?;
    let loaded = LoadedPlugin {
        info: PluginInfo {
            name: name.to_string(),
            abi_version,
            capabilities,
            size_bytes: bytes.len(),
            bundled,
            version: source.version,
            from_cache: !freshly_compiled,
        },
        pre,
        name,
        stats: Arc::default(),
        log: Arc::default(),
        component,
        freshly_compiled,
    };
    super::samples::check_exchange(&loaded, limits)?;
    Ok(loaded)
}

/// Instantiates the plugin once, under the usual limits, to read its capabilities.
fn probe(
    engine: &Engine,
    pre: &ExchangePluginPre<HostState>,
    limits: &Limits,
    name: &Arc<str>,
) -> Result<Capabilities, LoadError> {
    let mut store = Store::new(engine, HostState::new(limits, name.clone(), "".into()));
    HostState::install(&mut store, |state| state);
    let fail = |e: wasmtime::Error| LoadError::Probe(format!("{e:#}"));
    HostState::arm_setup(&mut store, |state| state);
    let plugin = pre.instantiate(&mut store).map_err(fail)?;
    HostState::arm_setup(&mut store, |state| state);
    let caps = plugin
        .broker_plugin_exchange()
        .call_get_capabilities(&mut store)
        .map_err(fail)?;
    match caps.kind {
        wit::PluginKind::Exchange => Ok(Capabilities {
            key_only: caps.key_only,
            reads_headers: caps.reads_headers,
            reads_body: caps.reads_body,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_versions() {
        assert!(validate_name("geo-hash_2.v1").is_ok());
        for bad in ["", "Topic", "a b", "x/y", &"a".repeat(65)] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
        assert_eq!(abi_version("broker:plugin/exchange@1.2.0"), Some("1.2.0"));
        assert_eq!(abi_version("broker:plugin/host"), Some(""));
        assert_eq!(abi_version("wasi:cli/env@0.2.0"), None);
        assert_eq!(major("2.0.0"), Some(2));
        assert_eq!(major(""), None);
    }
}
