// Shared by `build.rs` (the bundled plugins) and the plugin host tests (the hostile test
// plugins), so both build Wasm the same way and share compiled dependencies.

/// A `cargo build --release --target wasm32-unknown-unknown` command for the workspace at
/// `manifest`, run from `config_dir` (whose `.cargo/config.toml` sets the component linker)
/// into `target_dir`.
#[allow(dead_code)]
fn wasm_cargo(
    manifest: &std::path::Path,
    config_dir: &std::path::Path,
    target_dir: &std::path::Path,
) -> std::process::Command {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = std::process::Command::new(cargo);
    cmd.current_dir(config_dir)
        .arg("build")
        .arg("--release")
        .args(["--target", "wasm32-unknown-unknown"])
        .arg("--manifest-path")
        .arg(manifest)
        // A target dir of its own: the outer cargo holds the lock on ours.
        .env("CARGO_TARGET_DIR", target_dir)
        // Small, fast plugins: no debug info, one codegen unit, LTO.
        .env("CARGO_PROFILE_RELEASE_DEBUG", "false")
        .env("CARGO_PROFILE_RELEASE_STRIP", "debuginfo")
        .env("CARGO_PROFILE_RELEASE_LTO", "true")
        .env("CARGO_PROFILE_RELEASE_CODEGEN_UNITS", "1")
        .env("CARGO_PROFILE_RELEASE_OPT_LEVEL", "3");
    // Flags and wrappers meant for the outer (host) build must not leak into this one.
    for var in [
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_BUILD_TARGET_DIR",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUSTFLAGS",
        "CARGO_LLVM_COV",
        "LLVM_PROFILE_FILE",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

/// Whether the Rust standard library for wasm32-unknown-unknown is installed.
#[allow(dead_code)]
fn wasm_target_installed() -> bool {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    std::process::Command::new(rustc)
        .args(["--print", "sysroot"])
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| {
            let sysroot = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            std::path::Path::new(&sysroot)
                .join("lib/rustlib/wasm32-unknown-unknown")
                .is_dir()
        })
        .unwrap_or(false)
}

/// Whether the wasm32 target is installed, after asking rustup to add it when it is not
/// (rustup does not add a `rust-toolchain.toml` target to a toolchain already installed,
/// so on a fresh machine the README's first command would stop here otherwise).
#[allow(dead_code)]
fn ensure_wasm_target() -> bool {
    if wasm_target_installed() {
        return true;
    }
    let added = std::process::Command::new("rustup")
        .args(["target", "add", "wasm32-unknown-unknown"])
        .status()
        .is_ok_and(|status| status.success());
    added && wasm_target_installed()
}

#[allow(dead_code)]
const MISSING_TARGET: &str = "the Rust target wasm32-unknown-unknown is not installed; \
    the broker's exchange plugins are built for it. Run:\n\n    \
    rustup target add wasm32-unknown-unknown\n";
