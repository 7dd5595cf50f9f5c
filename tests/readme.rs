//! The README's two commands, checked as a newcomer would meet them on a clean clone.

use std::path::Path;
use std::process::Command;

fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

/// The commands of the README's "Two commands" block, without their comments.
fn readme_commands() -> Vec<String> {
    let readme = std::fs::read_to_string(workspace_root().join("README.md")).unwrap();
    let section = readme
        .split("## Two commands")
        .nth(1)
        .expect("README has a 'Two commands' section");
    let block = section
        .split("```sh")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("the section has a sh code block");
    block
        .lines()
        .map(|line| line.split('#').next().unwrap().trim().to_string())
        .filter(|line| !line.is_empty())
        .collect()
}

#[test]
fn the_first_command_runs_the_broker_binary() {
    let commands = readme_commands();
    assert_eq!(commands[0], "cargo run --release -- serve");
    // `cargo run` without `-p`/`--bin` picks among the default members' binaries: exactly
    // one must be there, and it must be the broker.
    let out = Command::new(env!("CARGO"))
        .args(["metadata", "--no-deps", "--format-version", "1"])
        .current_dir(workspace_root())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let defaults: Vec<&str> = meta["workspace_default_members"]
        .as_array()
        .expect("cargo reports workspace_default_members")
        .iter()
        .map(|id| id.as_str().unwrap())
        .collect();
    let bins: Vec<&str> = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| defaults.contains(&p["id"].as_str().unwrap()))
        .flat_map(|p| p["targets"].as_array().unwrap())
        .filter(|t| t["kind"].as_array().unwrap().iter().any(|k| k == "bin"))
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        bins,
        ["broker"],
        "`cargo run` at the root must resolve to the broker"
    );
}

#[test]
fn ci_runs_the_second_command() {
    let commands = readme_commands();
    assert_eq!(commands[1], "cargo test --workspace");
    let ci = std::fs::read_to_string(workspace_root().join(".ci/run")).unwrap();
    assert!(
        ci.lines().any(|line| line.trim() == commands[1]),
        ".ci/run must run the README's test command"
    );
}
