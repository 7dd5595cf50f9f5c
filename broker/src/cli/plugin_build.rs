//! `broker plugin build [PATH]`: builds a plugin crate as a Wasm component, the way the
//! broker's own build compiles its bundled plugins (one `wasm_cargo` for both).

use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{Context as _, bail};
use clap::Args;

include!("../../build/wasm_cargo.rs");

#[derive(Args)]
pub struct BuildArgs {
    /// The plugin crate's directory (with its Cargo.toml).
    #[arg(default_value = ".")]
    path: PathBuf,
    /// Where cargo puts the build [default: CARGO_TARGET_DIR, else the crate's cargo
    /// configuration (`plugin new` sets the broker's plugin build directory), else
    /// PATH/target]. Plugins that share one compile the SDK's dependencies once.
    #[arg(long, env = "CARGO_TARGET_DIR")]
    target_dir: Option<PathBuf>,
}

pub fn run(args: BuildArgs) -> anyhow::Result<()> {
    for wasm in build(&args.path, args.target_dir.as_deref())? {
        println!("{}", wasm.display());
    }
    Ok(())
}

/// Builds the crate at `path` for wasm32 and returns the components it produced. Cargo's
/// progress and errors go to stderr as they come.
pub fn build(path: &Path, target_dir: Option<&Path>) -> anyhow::Result<Vec<PathBuf>> {
    // Absolute: cargo runs in the crate's directory (for its `.cargo/config.toml`).
    let path = &std::path::absolute(path)?;
    let manifest = path.join("Cargo.toml");
    if !manifest.is_file() {
        bail!(
            "{} has no Cargo.toml (create a plugin with `broker plugin new NAME`)",
            path.display()
        );
    }
    if !ensure_wasm_target() {
        bail!("{MISSING_TARGET}");
    }
    if !component_linker_found() {
        bail!(
            "the component linker `wasm-component-ld` is missing: it ships with Rust 1.82 and \
             later (`rustup update stable`), or install it with `cargo install wasm-component-ld`"
        );
    }
    let explicit = target_dir.map(std::path::absolute).transpose()?;
    let default = path.join("target");
    let mut cargo = wasm_cargo(&manifest, path, explicit.as_deref().unwrap_or(&default));
    if explicit.is_none() {
        // Cargo decides: the crate's `build.target-dir`, else PATH/target.
        cargo.env_remove("CARGO_TARGET_DIR");
    }
    // The component linker, also for crates without the `.cargo/config.toml` that
    // `plugin new` writes.
    cargo
        .env(
            "CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_LINKER",
            "wasm-component-ld",
        )
        .arg("--message-format=json-render-diagnostics")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut child = cargo
        .spawn()
        .context("cannot run cargo (install Rust with rustup: https://rustup.rs)")?;
    let stdout = child.stdout.take().expect("piped");
    let mut components = Vec::new();
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line?;
        let Ok(message) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if message["reason"] != "compiler-artifact" {
            continue;
        }
        let wasm = message["filenames"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|f| f.as_str())
            .filter(|f| f.ends_with(".wasm"));
        components.extend(wasm.map(PathBuf::from));
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("cargo build for wasm32-unknown-unknown failed ({status})");
    }
    if components.is_empty() {
        bail!(
            "the build produced no .wasm file: a plugin crate needs \
             `crate-type = [\"cdylib\", \"rlib\"]` under [lib]"
        );
    }
    Ok(components)
}

/// Whether `wasm-component-ld` is in the toolchain (`<sysroot>/lib/rustlib/<host>/bin`,
/// where rustc looks for it) or on PATH.
fn component_linker_found() -> bool {
    let exe = format!("wasm-component-ld{}", std::env::consts::EXE_SUFFIX);
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let sysroot = std::process::Command::new(rustc)
        .args(["--print", "sysroot"])
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
    let in_toolchain = sysroot
        .and_then(|root| std::fs::read_dir(root.join("lib/rustlib")).ok())
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .any(|host| host.path().join("bin").join(&exe).is_file());
    let on_path = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(&exe).is_file()))
        .unwrap_or(false);
    in_toolchain || on_path
}

#[cfg(test)]
mod tests {
    /// This toolchain builds the bundled plugins with it, so it must be found.
    #[test]
    fn finds_the_component_linker_of_this_toolchain() {
        assert!(super::component_linker_found());
    }
}
