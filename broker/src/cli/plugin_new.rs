//! `broker plugin new NAME`: writes a plugin crate built on plugin-sdk, from the templates
//! in `broker/templates/plugin/`.
//!
//! The SDK is not published to a registry, so the crate depends on it by path: `--sdk`,
//! else the plugin-sdk of the source tree this broker was built from (when it is still
//! there). With that tree's SDK the new crate also gets the tree's `Cargo.lock` (the very
//! dependency versions the bundled plugins use, offline) and builds in the directory
//! where the broker's build compiled them (`.cargo/config.toml`'s `build.target-dir`), so
//! their compiled dependencies are reused.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use clap::{Args, ValueEnum};

const CARGO_TOML: &str = include_str!("../../templates/plugin/Cargo.toml.in");
const CARGO_CONFIG: &str = include_str!("../../templates/plugin/cargo-config.toml.in");
const GITIGNORE: &str = include_str!("../../templates/plugin/gitignore.in");
const README: &str = include_str!("../../templates/plugin/README.md.in");
const EXCHANGE_LIB: &str = include_str!("../../templates/plugin/exchange.rs.in");
const HANDLER_LIB: &str = include_str!("../../templates/plugin/handler.rs.in");

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Kind {
    /// An exchange type (routes messages to bindings); the example routes on the body.
    Exchange,
    /// A consumer-side handler (acks, retries, rejects, publishes).
    Handler,
}

#[derive(Args)]
pub struct NewArgs {
    /// The plugin's name: the exchange type (or handler) it is deployed as. Lower-case
    /// letters, digits and `-`.
    name: String,
    #[arg(long, value_enum, default_value = "exchange")]
    kind: Kind,
    /// Where to write the crate [default: ./NAME]; must not exist or be empty.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// The plugin-sdk directory to depend on [default: the one in the source tree this
    /// broker was built from].
    #[arg(long)]
    sdk: Option<PathBuf>,
}

/// plugin-sdk in the source tree this binary was built from.
fn built_from_sdk() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugin-sdk")
}

fn check_name(name: &str) -> anyhow::Result<()> {
    let valid = name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if name.is_empty() || !valid || !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        bail!(
            "plugin name `{name}`: use lower-case letters, digits and `-`, starting with a letter"
        );
    }
    Ok(())
}

/// `urgent-router` -> `UrgentRouter`.
fn type_name(name: &str) -> String {
    name.split('-')
        .map(|part| {
            let mut chars = part.chars();
            match chars.next() {
                Some(first) => first.to_ascii_uppercase().to_string() + chars.as_str(),
                None => String::new(),
            }
        })
        .collect()
}

/// Fills `{{key}}` placeholders.
fn fill(template: &str, values: &[(&str, &str)]) -> String {
    values
        .iter()
        .fold(template.to_owned(), |text, (key, value)| {
            text.replace(&format!("{{{{{key}}}}}"), value)
        })
}

pub fn run(args: NewArgs) -> anyhow::Result<()> {
    check_name(&args.name)?;
    let name = args.name.as_str();
    let dir = args.dir.clone().unwrap_or_else(|| PathBuf::from(name));
    if dir.exists() && dir.read_dir()?.next().is_some() {
        bail!("{} exists and is not empty", dir.display());
    }
    let sdk = args.sdk.clone().unwrap_or_else(built_from_sdk);
    let sdk = std::fs::canonicalize(&sdk).with_context(|| {
        format!(
            "plugin-sdk not found at {}; pass --sdk PATH to the plugin-sdk directory of a \
             checkout of the broker's repository",
            sdk.display()
        )
    })?;
    if !sdk.join("Cargo.toml").is_file() {
        bail!("{} is not a crate (no Cargo.toml)", sdk.display());
    }

    let (crate_name, description, lib, test_flags, use_rows) = match args.kind {
        Kind::Exchange => (
            format!("exchange-{name}"),
            format!("`{name}`: an exchange type that routes on the first word of the body"),
            EXCHANGE_LIB,
            " --binding urgent --message '{\"body\":\"urgent: disk full\"}'".to_owned(),
            format!(
                "| Use it | `broker declare exchange alerts --type {name}`, then \
                 `broker bind alerts QUEUE --key urgent` |\n"
            ),
        ),
        Kind::Handler => (
            format!("handler-{name}"),
            format!("`{name}`: a handler that copies text bodies in upper case to a queue"),
            HANDLER_LIB,
            " --message '{\"body\":\"hello\"}'".to_owned(),
            format!("| Use it | `broker handler attach QUEUE {name} --config to=OUT_QUEUE` |\n"),
        ),
    };
    let sdk_path = sdk.display().to_string();
    let sdk_dependency = format!("broker-plugin-sdk = {{ path = {sdk_path:?} }}");
    let wasm_name = crate_name.replace('-', "_");
    let type_name = type_name(name);
    let sdk_readme = sdk.join("README.md").display().to_string();
    // With the source tree's SDK: build where the broker's build compiled the bundled
    // plugins, whose dependencies (the SDK's) are this crate's too.
    let target_dir_section = match args.sdk {
        None => format!(
            "\n# Shared with the broker's build of its bundled plugins, where the SDK's\n\
             # dependencies are compiled already: this crate's first build takes seconds.\n\
             [build]\ntarget-dir = {:?}\n",
            env!("BROKER_PLUGIN_WASM_TARGET")
        ),
        Some(_) => String::new(),
    };
    let values: &[(&str, &str)] = &[
        ("name", name),
        ("crate_name", &crate_name),
        ("type_name", &type_name),
        ("wasm_name", &wasm_name),
        ("description", &description),
        ("sdk_dependency", &sdk_dependency),
        ("sdk_readme", &sdk_readme),
        ("test_flags", &test_flags),
        ("use_rows", &use_rows),
        ("target_dir_section", &target_dir_section),
    ];

    let files: [(&str, &str); 5] = [
        ("Cargo.toml", CARGO_TOML),
        (".cargo/config.toml", CARGO_CONFIG),
        (".gitignore", GITIGNORE),
        ("README.md", README),
        ("src/lib.rs", lib),
    ];
    for (path, template) in files {
        let path = dir.join(path);
        std::fs::create_dir_all(path.parent().expect("a file in the crate"))?;
        std::fs::write(&path, fill(template, values))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    // The source tree's lock file: the same dependency versions as the bundled plugins.
    let lock = sdk.join("../Cargo.lock");
    if args.sdk.is_none() && lock.is_file() {
        std::fs::copy(&lock, dir.join("Cargo.lock"))?;
    }

    let kind = match args.kind {
        Kind::Exchange => "exchange type",
        Kind::Handler => "handler",
    };
    println!("{kind} {name} written to {}", dir.display());
    println!(
        "next: cd {} && cargo test && broker plugin build",
        dir.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_placeholders() {
        assert_eq!(type_name("urgent-router"), "UrgentRouter");
        assert_eq!(type_name("x"), "X");
        assert!(check_name("urgent-router2").is_ok());
        for bad in ["", "Upper", "2x", "a_b", "a b"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
        assert_eq!(
            fill("{{a}}-{{b}}-{{a}}", &[("a", "1"), ("b", "2")]),
            "1-2-1"
        );
    }

    /// Every placeholder of every template is filled by `run`.
    #[test]
    fn templates_use_known_placeholders_only() {
        let known = [
            "name",
            "crate_name",
            "type_name",
            "wasm_name",
            "description",
            "sdk_dependency",
            "sdk_readme",
            "test_flags",
            "use_rows",
            "target_dir_section",
        ];
        let all = [
            CARGO_TOML,
            CARGO_CONFIG,
            GITIGNORE,
            README,
            EXCHANGE_LIB,
            HANDLER_LIB,
        ];
        for template in all {
            for piece in template.split("{{").skip(1) {
                let key = piece.split("}}").next().unwrap();
                assert!(known.contains(&key), "unknown placeholder {key}");
            }
        }
    }
}
