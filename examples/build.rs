//! Builds the hot-reload demo's plugin twice (version 1, and version 2 with `--features
//! v2`) as Wasm components into OUT_DIR, where `hot-reload/main.rs` embeds both.

use std::env;
use std::path::PathBuf;

include!("../broker/build/wasm_cargo.rs");

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = manifest_dir
        .parent()
        .expect("examples/ is in the workspace");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo"));
    for path in ["examples/hot-reload/plugin", "plugin-sdk", "broker/build"] {
        println!("cargo:rerun-if-changed={}", root.join(path).display());
    }
    if !ensure_wasm_target() {
        panic!("{MISSING_TARGET}");
    }
    // Its own target dir: the bundled plugins' build may run at the same time.
    let target_dir = out_dir.join("plugin-wasm");
    for (features, file) in [(None, "orders_v1.wasm"), (Some("v2"), "orders_v2.wasm")] {
        let mut cmd = wasm_cargo(&root.join("Cargo.toml"), &root.join("plugins"), &target_dir);
        cmd.args(["-p", "orders-router"]);
        if let Some(features) = features {
            cmd.args(["--features", features]);
        }
        let output = cmd
            .output()
            .expect("cannot run cargo to build the demo plugin");
        if !output.status.success() {
            panic!(
                "building the demo plugin for wasm32 failed:\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let built = target_dir.join("wasm32-unknown-unknown/release/orders_router.wasm");
        std::fs::copy(&built, out_dir.join(file))
            .unwrap_or_else(|e| panic!("cannot copy {}: {e}", built.display()));
    }
}
