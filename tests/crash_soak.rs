//! The crash soak, bounded: `broker bench soak` runs the real binary, publishing with
//! confirms and consuming with acks while it SIGKILLs and restarts the broker at random
//! moments; no confirmed message may be lost, no body may change, and no message whose
//! ack the broker had stored (shown by a confirmed marker sent after it) may come back. `CRASH_SOAK_MINUTES`
//! (default 1: a minute in CI) runs it longer; `broker bench soak --minutes N` is the same
//! outside tests.

mod common;

use std::process::Command;

fn field(line: &str, name: &str) -> u64 {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no {name}= in `{line}`"))
        .parse()
        .unwrap()
}

#[test]
fn sigkill_soak_loses_and_corrupts_nothing() {
    let minutes = std::env::var("CRASH_SOAK_MINUTES").unwrap_or_else(|_| "1".into());
    let out = Command::new(common::bin())
        .args(["bench", "soak", "--minutes", &minutes, "--seed", "15"])
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    println!("{stdout}");
    assert!(out.status.success(), "{stdout}{stderr}");
    let line = stdout
        .lines()
        .find(|l| l.starts_with("scenario=soak"))
        .expect("the soak's report line");
    assert_eq!(field(line, "lost"), 0, "{line}");
    assert_eq!(field(line, "corrupted"), 0, "{line}");
    assert_eq!(field(line, "left"), 0, "the drain took everything: {line}");
    assert!(field(line, "kills") >= 3, "{line}");
    let confirmed = field(line, "confirmed");
    assert!(confirmed > 1000, "{line}");
    assert!(field(line, "delivered") >= confirmed, "{line}");
    assert_eq!(field(line, "duplicates_after_stored_ack"), 0, "{line}");
    // The check above covered real acks: markers were confirmed.
    assert!(field(line, "acks_stored") > 1000, "{line}");
}
