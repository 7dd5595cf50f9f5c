//! A plugin version compiled and validated, not serving yet.

use super::loader::{LoadedPlugin, PluginInfo};

/// A compiled and validated plugin version that is not serving yet
/// ([`super::PluginHost::install`] makes it current).
pub struct PreparedPlugin {
    pub(super) plugin: Prepared,
}

pub(super) enum Prepared {
    Exchange(LoadedPlugin),
    Handler(super::handler::LoadedHandler),
}

impl std::fmt::Debug for PreparedPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreparedPlugin")
            .field("info", self.info())
            .finish_non_exhaustive()
    }
}

impl PreparedPlugin {
    pub fn is_exchange(&self) -> bool {
        matches!(self.plugin, Prepared::Exchange(_))
    }

    /// The exchange version, or `None` for a handler.
    pub(super) fn into_exchange(self) -> Option<LoadedPlugin> {
        match self.plugin {
            Prepared::Exchange(plugin) => Some(plugin),
            Prepared::Handler(_) => None,
        }
    }

    pub fn info(&self) -> &PluginInfo {
        match &self.plugin {
            Prepared::Exchange(plugin) => &plugin.info,
            Prepared::Handler(handler) => handler.info(),
        }
    }

    /// The compiled form to keep in the artifact cache, if it was compiled now (not
    /// taken from the cache). Handlers are always compiled.
    pub fn artifact(&self) -> Option<Vec<u8>> {
        let Prepared::Exchange(plugin) = &self.plugin else {
            return None;
        };
        if !plugin.freshly_compiled {
            return None;
        }
        match plugin.component.serialize() {
            Ok(bytes) => Some(bytes),
            Err(e) => {
                tracing::warn!(plugin = %plugin.info.name, error = %e, "cannot serialize compiled plugin");
                None
            }
        }
    }
}
