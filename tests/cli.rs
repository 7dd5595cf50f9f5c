//! The `broker` command-line client against the real binary.

mod common;
#[path = "support/hostile.rs"]
mod hostile;

use std::process::Command;

use common::{BrokerProcess, bin, run_cli};

#[test]
fn publish_consume_and_admin_commands() {
    let dir = tempfile::tempdir().unwrap();
    let process = BrokerProcess::spawn(dir.path());
    let url = process.url.clone();

    let (ok, out, err) = run_cli(
        &[
            "publish",
            "orders",
            "--body",
            "hi",
            "--count",
            "3",
            "--persistent",
            "--header",
            "n=1",
        ],
        &url,
    );
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "confirmed 3 of 3 messages");

    let (ok, out, _) = run_cli(&["queues"], &url);
    assert!(ok);
    let row: Vec<&str> = out.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(row, ["orders", "3", "0", "0", "true"]);

    let (ok, out, err) = run_cli(&["consume", "orders", "--count", "2"], &url);
    assert!(ok, "{err}");
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["message"]["body"], "hi");
    assert_eq!(lines[0]["message"]["headers"]["n"], 1);
    assert_eq!(lines[0]["message"]["properties"]["persistent"], true);

    let (ok, out, _) = run_cli(&["purge", "orders"], &url);
    assert!(ok);
    assert_eq!(out.trim(), "purged 1 messages from orders");

    let (ok, _, _) = run_cli(
        &[
            "declare",
            "queue",
            "audit",
            "--durable",
            "--arg",
            "owner=billing",
        ],
        &url,
    );
    assert!(ok);
    let (ok, _, err) = run_cli(&["declare", "queue", "audit"], &url);
    assert!(!ok, "redeclaring with other properties fails");
    assert!(err.contains("precondition_failed"), "{err}");

    let (ok, _, err) = run_cli(&["declare", "exchange", "ex", "--type", "nope"], &url);
    assert!(!ok);
    assert!(err.contains("unknown_exchange_type"), "{err}");

    let (ok, out, _) = run_cli(&["delete", "queue", "audit"], &url);
    assert!(ok);
    assert_eq!(out.trim(), "queue audit deleted with 0 messages");
    let (ok, _, err) = run_cli(&["delete", "queue", "audit"], &url);
    assert!(!ok);
    assert!(err.contains("queue_not_found"), "{err}");
}

#[test]
fn unreachable_server_is_a_clear_error() {
    let (ok, _, err) = run_cli(&["queues"], "ws://127.0.0.1:1");
    assert!(!ok);
    assert!(
        err.starts_with("error: cannot connect to ws://127.0.0.1:1"),
        "{err}"
    );
}

#[test]
fn plugin_deploy_list_history_rollback() {
    let dir = tempfile::tempdir().unwrap();
    let process = BrokerProcess::spawn(dir.path());
    let url = process.url.clone();
    let wasm = dir.path().join("router.wasm");
    std::fs::write(&wasm, hostile::plugin("trap")).unwrap();
    let path = wasm.to_str().unwrap();

    let (ok, out, err) = run_cli(&["plugin", "deploy", "router", path], &url);
    assert!(ok, "{err}");
    assert!(
        out.starts_with("plugin router version 1 active in "),
        "{out}"
    );
    let (ok, out, _) = run_cli(&["plugin", "deploy", "router", path], &url);
    assert!(ok);
    assert_eq!(
        out.trim(),
        "plugin router version 1 is already active with these bytes"
    );
    std::fs::write(&wasm, hostile::plugin("body")).unwrap();
    let (ok, out, _) = run_cli(&["plugin", "deploy", "router", path], &url);
    assert!(ok);
    assert!(
        out.starts_with("plugin router version 2 active in "),
        "{out}"
    );

    let (ok, out, _) = run_cli(&["plugin", "list"], &url);
    assert!(ok);
    let row = out
        .lines()
        .find(|l| l.starts_with("router"))
        .expect("listed");
    assert_eq!(row.split_whitespace().nth(2), Some("2"), "{row}");
    assert!(out.lines().any(|l| l.starts_with("topic")), "{out}");

    let (ok, out, _) = run_cli(&["plugin", "history", "router"], &url);
    assert!(ok);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(lines[1].starts_with('*'), "version 2 active: {out}");

    let (ok, out, _) = run_cli(&["plugin", "rollback", "router"], &url);
    assert!(ok);
    assert_eq!(out.trim(), "plugin router rolled back to version 1");
    let (ok, _, err) = run_cli(&["plugin", "rollback", "router"], &url);
    assert!(!ok);
    assert!(err.contains("plugin_not_found"), "{err}");

    let junk = dir.path().join("junk.wasm");
    std::fs::write(&junk, b"junk").unwrap();
    let (ok, _, err) = run_cli(
        &["plugin", "deploy", "router", junk.to_str().unwrap()],
        &url,
    );
    assert!(!ok);
    assert!(err.contains("invalid_plugin"), "{err}");
}

/// A tiny run of each quick bench scenario: one line each, in the documented format.
#[test]
fn bench_scenarios_print_one_line_each() {
    for args in [
        &["persistent", "--msgs", "300"][..],
        &["transient", "--msgs", "300"],
        &["persistent", "--msgs", "300", "--encoding", "binary"],
        &["topic", "--msgs", "300", "--bindings", "20"],
        &["fanout", "--msgs", "100"],
        &["handler", "--msgs", "300"],
        // Two seconds at 2,000/s: one redeploy at the one-second mark.
        &["reload", "--msgs", "4000", "--rate", "2000"],
        &["startup", "--plugins", "1"],
    ] {
        let out = Command::new(bin())
            .arg("bench")
            .args(args)
            .arg("--embedded")
            .output()
            .unwrap();
        let stdout = String::from_utf8(out.stdout).unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let lines: Vec<&str> = stdout.lines().collect();
        assert_eq!(lines.len(), 1, "{stdout}");
        if args[0] == "reload" {
            assert!(stdout.contains(" deploys=1 "), "{stdout}");
        }
        let fields: Vec<&str> = lines[0]
            .split(' ')
            .map(|f| f.split('=').next().unwrap())
            .collect();
        assert_eq!(
            &fields[..8],
            [
                "scenario",
                "msgs",
                "secs",
                "rate",
                "p50_us",
                "p99_us",
                "p999_us",
                "publish_confirm_p99_us"
            ],
            "{stdout}"
        );
        assert!(
            lines[0].starts_with(&format!("scenario={} msgs=", args[0])),
            "{stdout}"
        );
        let encoding = if args.contains(&"binary") {
            "binary"
        } else {
            "json"
        };
        assert!(
            lines[0].ends_with(&format!(" encoding={encoding}")),
            "{stdout}"
        );
    }
}
