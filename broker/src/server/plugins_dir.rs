//! The plugins directory: every `NAME.wasm` in it is deployed as plugin `NAME` through the
//! router's deploy operation (the same path as `broker plugin deploy`), at startup and,
//! when watched, whenever the file changes.
//!
//! Writers need not be atomic: a file is deployed only once its size and modification
//! time held still for a whole poll interval, and a half-written file that is caught
//! anyway fails validation and is refused, leaving the active version in place. Files
//! whose name starts with `.` (editors' and `mv`-based writers' temporaries) are ignored.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use crate::router::{RouterHandle, Session};

/// How often a watched directory is scanned.
pub const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// What was last seen of one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seen {
    len: u64,
    modified: Option<SystemTime>,
}

pub struct PluginsDir {
    dir: PathBuf,
    session: Session,
    /// The state of each file at the previous scan.
    seen: HashMap<PathBuf, Seen>,
    /// The state of each file when it was last deployed (or refused) ...
    tried: HashMap<PathBuf, Seen>,
    /// ... and the SHA-256 of its bytes then.
    deployed: HashMap<PathBuf, [u8; 32]>,
}

impl PluginsDir {
    pub fn new(dir: &Path, router: &RouterHandle) -> Self {
        PluginsDir {
            dir: dir.to_owned(),
            session: Session::open(router.clone()),
            seen: HashMap::new(),
            tried: HashMap::new(),
            deployed: HashMap::new(),
        }
    }

    /// Deploys every plugin file now (startup: files are taken as complete).
    pub async fn deploy_all(&mut self) -> std::io::Result<()> {
        for (path, seen) in self.scan()? {
            self.seen.insert(path.clone(), seen);
            self.tried.insert(path.clone(), seen);
            self.deploy(&path).await;
        }
        Ok(())
    }

    /// Scans every [`POLL_INTERVAL`] until `shutdown`, deploying files that changed and
    /// then held still for a whole interval.
    pub async fn watch(mut self, mut shutdown: watch::Receiver<bool>) {
        tracing::info!(dir = %self.dir.display(), "watching the plugins directory");
        loop {
            tokio::select! {
                _ = tokio::time::sleep(POLL_INTERVAL) => {}
                _ = shutdown.changed() => return,
            }
            let files = match self.scan() {
                Ok(files) => files,
                Err(e) => {
                    tracing::warn!(dir = %self.dir.display(), error = %e, "cannot scan the plugins directory");
                    continue;
                }
            };
            let mut seen = HashMap::with_capacity(files.len());
            for (path, now) in files {
                let still = self.seen.get(&path) == Some(&now);
                if still && self.tried.get(&path) != Some(&now) {
                    self.tried.insert(path.clone(), now);
                    self.deploy(&path).await;
                }
                seen.insert(path, now);
            }
            self.seen = seen;
        }
    }

    /// `*.wasm` files not starting with `.`, in name order.
    fn scan(&self) -> std::io::Result<Vec<(PathBuf, Seen)>> {
        let mut files = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            let path = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') || path.extension().is_none_or(|ext| ext != "wasm") {
                continue;
            }
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_file() {
                let seen = Seen {
                    len: meta.len(),
                    modified: meta.modified().ok(),
                };
                files.push((path, seen));
            }
        }
        files.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(files)
    }

    /// Deploys `path` unless its bytes are the ones last tried from it (a touched file).
    async fn deploy(&mut self, path: &Path) {
        let Some(name) = path.file_stem().and_then(|s| s.to_str()) else {
            return;
        };
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read plugin file");
                return;
            }
        };
        let hash: [u8; 32] = Sha256::digest(&bytes).into();
        if self.deployed.insert(path.to_owned(), hash) == Some(hash) {
            return;
        }
        let request = serde_json::json!({
            "op": "deploy_plugin",
            "name": name,
            "wasm_base64": base64::engine::general_purpose::STANDARD.encode(&bytes),
            "deployed_by": format!("plugins directory ({})", path.display()),
        });
        match self.session.call(request).await {
            Ok(result) if result["unchanged"] == true => {
                tracing::debug!(plugin = name, "plugin file matches the active version");
            }
            Ok(result) => {
                tracing::info!(plugin = name, version = %result["version"], path = %path.display(), "plugin file deployed");
            }
            Err(e) => {
                tracing::warn!(plugin = name, path = %path.display(), error = %e, "plugin file refused; the active version stays");
            }
        }
    }
}
