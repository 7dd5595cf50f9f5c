//! Builds the test plugins in `tests/plugins` for wasm32, once per test process.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

include!("../../broker/build/wasm_cargo.rs");

fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("broker/ is inside the workspace")
}

/// `<target>/plugin-wasm`, where build.rs builds the bundled plugins (shared dependencies).
fn target_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("BROKER_PLUGIN_TARGET_DIR") {
        return dir.into();
    }
    // The test binary is <target>/<profile>/deps/<name>.
    let exe = std::env::current_exe().expect("test binary path");
    exe.ancestors()
        .nth(3)
        .map(|target| target.join("plugin-wasm"))
        .unwrap_or_else(|| workspace_root().join("target/plugin-wasm"))
}

fn build_all() -> PathBuf {
    assert!(ensure_wasm_target(), "{MISSING_TARGET}");
    let plugins = workspace_root().join("tests/plugins");
    let target = target_dir();
    let output = wasm_cargo(&plugins.join("Cargo.toml"), &plugins, &target)
        .arg("--workspace")
        .output()
        .expect("run cargo");
    assert!(
        output.status.success(),
        "building the test plugins failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    target.join("wasm32-unknown-unknown/release")
}

/// The component bytes of test plugin `name` (`spin`, `alloc`, `trap`, `bad-ids`,
/// `huge-output`, `wrong-abi`, `body`).
pub fn plugin(name: &str) -> Vec<u8> {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    let dir = DIR.get_or_init(build_all);
    let file = dir.join(format!("hostile_{}.wasm", name.replace('-', "_")));
    std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()))
}

/// Loads test plugin `plugin` as type `plugin` into `host` and declares exchange
/// `ex-<plugin>` with bindings 1 -> "a" and 2 -> "b".
#[allow(dead_code)] // used by the host-level tests only
pub fn exchange(host: &broker::plugin::PluginHost, plugin: &str) -> broker::plugin::PluginExchange {
    use broker::exchange::Exchange as _;
    let none = broker::message::Headers::new();
    host.load_blocking(plugin, &self::plugin(plugin))
        .unwrap_or_else(|e| panic!("load {plugin}: {e}"));
    let mut ex = host
        .create_exchange(plugin, &format!("ex-{plugin}"), &none)
        .expect("declare");
    ex.bind(1, "a", &none).unwrap();
    ex.bind(2, "b", &none).unwrap();
    ex
}
