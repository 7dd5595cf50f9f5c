//! Builds every bundled plugin (the crates under `plugins/` listed in [`BUNDLED`]) as a Wasm
//! component and writes `bundled_plugins.rs` to OUT_DIR: the tables `src/plugin/bundled.rs`
//! includes, which embed the components with `include_bytes!`.

use std::env;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

include!("build/wasm_cargo.rs");

/// What a bundled plugin is; decides its crate name (`<kind>-<name>`) and its table.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    /// An exchange type, registered under its name and reserved.
    Exchange,
    /// A handler (crate `handler-<name>`); not an exchange type.
    Handler,
}

/// Every plugin bundled with the broker: (name, kind), built from the workspace crate
/// `<kind>-<name>`. Adding one is one line here (and a workspace member).
const BUNDLED: &[(&str, Kind)] = &[
    ("direct", Kind::Exchange),
    ("topic", Kind::Exchange),
    ("fanout", Kind::Exchange),
    ("headers", Kind::Exchange),
    ("consistent-hash", Kind::Exchange),
    ("json-router", Kind::Exchange),
    ("random", Kind::Exchange),
    ("schema-gate", Kind::Exchange),
    ("email-sender", Kind::Handler),
    ("loyalty", Kind::Handler),
    ("redact", Kind::Handler),
    ("enrich", Kind::Handler),
    ("flaky", Kind::Handler),
];

impl Kind {
    fn prefix(self) -> &'static str {
        match self {
            Kind::Exchange => "exchange",
            Kind::Handler => "handler",
        }
    }
}

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

    if !ensure_wasm_target() {
        panic!("{MISSING_TARGET}");
    }

    let target_dir = plugin_target_dir(&out_dir);
    // `broker plugin new` points new plugin crates here, where the SDK's dependencies are
    // compiled already.
    println!(
        "cargo:rustc-env=BROKER_PLUGIN_WASM_TARGET={}",
        target_dir.display()
    );
    let mut cmd = wasm_cargo(&root.join("Cargo.toml"), &root.join("plugins"), &target_dir);
    for (name, kind) in BUNDLED {
        cmd.args(["-p", &format!("{}-{name}", kind.prefix())]);
    }
    let output = cmd.output().expect("cannot run cargo to build the plugins");
    if !output.status.success() {
        panic!(
            "building the bundled plugins for wasm32 failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    let mut exchanges = Vec::new();
    let mut handlers = Vec::new();
    for &(name, kind) in BUNDLED {
        // Cargo names the artifact after the crate, with `-` as `_`.
        let file = format!("{}_{}.wasm", kind.prefix(), name.replace('-', "_"));
        let built = target_dir
            .join("wasm32-unknown-unknown/release")
            .join(&file);
        let copy = out_dir.join(&file);
        // A fresh file, not a write through an old one: target dirs may be hardlinked
        // copies of each other.
        let _ = std::fs::remove_file(&copy);
        std::fs::copy(&built, &copy)
            .unwrap_or_else(|e| panic!("cannot copy {}: {e}", built.display()));
        match kind {
            Kind::Exchange => exchanges.push((name, copy)),
            Kind::Handler => handlers.push((name, copy)),
        }
    }
    let mut table = String::new();
    write_table(&mut table, "BUNDLED_EXCHANGES", &exchanges);
    write_table(&mut table, "BUNDLED_HANDLERS", &handlers);
    let table_file = out_dir.join("bundled_plugins.rs");
    let _ = std::fs::remove_file(&table_file);
    std::fs::write(table_file, table).expect("cannot write bundled_plugins.rs");
}

/// `pub const NAME: [(&str, &[u8]); N] = [(name, include_bytes!(path)), ...];`
fn write_table(out: &mut String, name: &str, entries: &[(&str, PathBuf)]) {
    writeln!(
        out,
        "pub const {name}: [(&str, &[u8]); {}] = [",
        entries.len()
    )
    .unwrap();
    for (plugin, path) in entries {
        writeln!(
            out,
            "    ({plugin:?}, include_bytes!({:?})),",
            path.display().to_string()
        )
        .unwrap();
    }
    writeln!(out, "];").unwrap();
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
