//! Builds the standard exchange plugins (`plugins/*`) as Wasm components and leaves them
//! in OUT_DIR, where `src/plugin/bundled.rs` embeds them with `include_bytes!`.

use std::env;
use std::path::{Path, PathBuf};

include!("build/wasm_cargo.rs");

const PLUGINS: [&str; 4] = ["direct", "topic", "fanout", "headers"];
/// Consumer-side handler plugins (`plugins/handler-*`, crates `handler-<name>`).
const HANDLERS: [&str; 5] = ["email-sender", "loyalty", "redact", "enrich", "flaky"];

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = manifest_dir
        .parent()
        .expect("broker/ is inside the workspace");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo"));

    for path in [
        "plugin-sdk",
        "plugins",
        "Cargo.lock",
        "Cargo.toml",
        "broker/build",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(path).display());
    }
    println!("cargo:rerun-if-env-changed=BROKER_PLUGIN_TARGET_DIR");

    if !wasm_target_installed() {
        panic!("{MISSING_TARGET}");
    }

    let target_dir = plugin_target_dir(&out_dir);
    let mut cmd = wasm_cargo(&root.join("Cargo.toml"), &root.join("plugins"), &target_dir);
    for plugin in PLUGINS {
        cmd.args(["-p", &format!("exchange-{plugin}")]);
    }
    for handler in HANDLERS {
        cmd.args(["-p", &format!("handler-{handler}")]);
    }
    let output = cmd.output().expect("cannot run cargo to build the plugins");
    if !output.status.success() {
        panic!(
            "building the exchange plugins for wasm32 failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    for plugin in PLUGINS {
        let file = format!("exchange_{plugin}.wasm");
        let built = target_dir
            .join("wasm32-unknown-unknown/release")
            .join(&file);
        std::fs::copy(&built, out_dir.join(&file))
            .unwrap_or_else(|e| panic!("cannot copy {}: {e}", built.display()));
    }
    for handler in HANDLERS {
        let file = format!("handler_{}.wasm", handler.replace('-', "_"));
        let built = target_dir
            .join("wasm32-unknown-unknown/release")
            .join(&file);
        std::fs::copy(&built, out_dir.join(&file))
            .unwrap_or_else(|e| panic!("cannot copy {}: {e}", built.display()));
    }
}

/// `<target>/plugin-wasm`, shared by every profile of the outer build (and by the tests'
/// hostile plugins), so dependencies are compiled for wasm32 once.
fn plugin_target_dir(out_dir: &Path) -> PathBuf {
    if let Some(dir) = env::var_os("BROKER_PLUGIN_TARGET_DIR") {
        return dir.into();
    }
    // OUT_DIR is <target>[/<triple>]/<profile>/build/<pkg>-<hash>/out.
    match out_dir.ancestors().nth(4) {
        Some(target) if target.is_dir() => target.join("plugin-wasm"),
        _ => out_dir.join("plugin-wasm"),
    }
}
