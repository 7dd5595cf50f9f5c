//! A plugin author's path with the real binary, in a temporary directory outside the
//! repository: `broker plugin new` -> `plugin build` -> `plugin test` -> `plugin deploy`
//! to a real broker -> publish -> the message arrives where the generated example sends
//! it. For an exchange type and for a handler.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use broker::protocol::{AttachHandler, Binding, HandlerMode};
use broker::{Client, Headers, Message, QueueOptions};
use common::{TestBroker, WAIT, bin, wait_for};

/// `<target>/plugin-wasm`: where the broker's build compiled the bundled plugins (as in
/// tests/support/hostile.rs), which `plugin new` makes the new crates' target-dir.
fn shared_target_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("BROKER_PLUGIN_TARGET_DIR") {
        return dir.into();
    }
    let exe = std::env::current_exe().expect("test binary path");
    exe.ancestors()
        .nth(3)
        .expect("<target>/<profile>/deps/<test>")
        .join("plugin-wasm")
}

/// Runs the real `broker` binary: success, stdout, stderr. No CARGO_TARGET_DIR: a new
/// crate builds where its `.cargo/config.toml` says.
fn broker(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(bin())
        .args(args)
        .env_remove("CARGO_TARGET_DIR")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// `cargo test` (native) in the generated crate: success and output.
fn cargo_test(crate_dir: &Path) -> (bool, String) {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .arg("test")
        .current_dir(crate_dir)
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// `plugin new` + `plugin build` in `dir`: the component's path.
fn new_and_build(dir: &Path, name: &str, kind: &str) -> String {
    let crate_dir = dir.join(name);
    let crate_path = crate_dir.to_str().unwrap();
    let (ok, out, err) = broker(&["plugin", "new", name, "--kind", kind, "--dir", crate_path]);
    assert!(ok, "plugin new: {err}");
    assert!(out.contains(&format!("{name} written to")), "{out}");
    for file in [
        "Cargo.toml",
        "src/lib.rs",
        "README.md",
        ".cargo/config.toml",
    ] {
        assert!(crate_dir.join(file).is_file(), "{file} written");
    }
    // What it writes is formatted, and its native unit tests pass.
    let lib = crate_dir.join("src/lib.rs");
    let fmt = Command::new("rustfmt")
        .args(["--edition", "2024", "--check"])
        .arg(&lib)
        .output()
        .unwrap();
    assert!(
        fmt.status.success(),
        "{}",
        String::from_utf8_lossy(&fmt.stdout)
    );
    let (ok, out) = cargo_test(&crate_dir);
    assert!(ok, "cargo test in the new crate: {out}");
    assert!(out.contains("test result: ok."), "{out}");
    // Writing into a crate that is there is refused, not overwritten.
    let (ok, _, err) = broker(&["plugin", "new", name, "--dir", crate_path]);
    assert!(!ok && err.contains("not empty"), "{err}");

    let (ok, out, err) = broker(&["plugin", "build", crate_path]);
    assert!(ok, "plugin build: {err}");
    let wasm = out.lines().last().expect("the component's path").to_owned();
    let expected = format!("{}_{}.wasm", kind, name.replace('-', "_"));
    assert!(wasm.ends_with(&expected), "{out}");
    // Built where the broker's build compiled the bundled plugins (their dependencies are
    // the new crate's): `plugin new` pointed the crate's target-dir there.
    assert!(
        Path::new(&wasm).starts_with(shared_target_dir()),
        "{wasm} not under {}",
        shared_target_dir().display()
    );
    let bytes = std::fs::read(&wasm).unwrap();
    // A component (layer 1), not a core module.
    assert_eq!(&bytes[..8], b"\0asm\x0d\0\x01\0", "{wasm} is a component");
    wasm
}

async fn bodies(c: &Client, queue: &str) -> Vec<String> {
    c.peek_queue(queue, 100)
        .await
        .unwrap()
        .iter()
        .map(|p| String::from_utf8(p.message.body.to_vec()).unwrap())
        .collect()
}

fn deploy(url: &str, name: &str, wasm: &str) {
    let (ok, out, err) = broker(&["plugin", "deploy", name, wasm, "--server", url]);
    assert!(ok, "plugin deploy: {err}");
    assert!(
        out.starts_with(&format!("plugin {name} version 1 active")),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn new_exchange_builds_tests_deploys_and_routes_on_the_body() {
    let dir = tempfile::tempdir().unwrap();
    let wasm = new_and_build(dir.path(), "urgent-router", "exchange");

    // In the real host, without a broker: the generated example routes on the body's
    // first word.
    let (ok, out, err) = broker(&[
        "plugin",
        "test",
        &wasm,
        "--binding",
        "urgent",
        "--binding",
        "info",
        "--message",
        r#"{"routing_key":"any","body":"urgent: disk full"}"#,
        "--message",
        r#"{"routing_key":"any","body":"hello"}"#,
    ]);
    assert!(ok, "plugin test: {err}");
    let lines: Vec<&str> = out.lines().filter(|l| l.starts_with("message")).collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(lines[0].contains("bindings 1 (`urgent`)"), "{out}");
    assert!(lines[1].contains("unroutable"), "{out}");
    assert!(out.contains("reads_body=true"), "{out}");

    let broker_under_test = TestBroker::start().await;
    let url = broker_under_test.url();
    deploy(&url, "urgent-router", &wasm);

    let c = broker_under_test.client().await;
    c.declare_exchange("alerts", "urgent-router", true, Headers::new())
        .await
        .unwrap();
    for (queue, key) in [("pages", "urgent"), ("digest", "info")] {
        c.declare_queue(queue, QueueOptions::durable())
            .await
            .unwrap();
        c.bind(Binding {
            exchange: "alerts".into(),
            queue: queue.into(),
            key: key.into(),
            arguments: Headers::new(),
        })
        .await
        .unwrap();
    }
    c.confirm_select().await.unwrap();
    // The same routing key each time: only the body decides.
    for body in ["urgent: disk full", "info: backup done", "hello"] {
        let mut msg = Message::text("same.key", body);
        msg.exchange = "alerts".into();
        c.publish(msg, false).await.unwrap();
    }
    assert_eq!(bodies(&c, "pages").await, ["urgent: disk full"]);
    assert_eq!(bodies(&c, "digest").await, ["info: backup done"]);

    // Its log lines (written when the bindings were pushed to it), from the broker.
    let (ok, out, err) = broker(&["plugin", "logs", "urgent-router", "--server", &url]);
    assert!(ok, "plugin logs: {err}");
    let line = out
        .lines()
        .find(|l| l.contains("takes bodies starting with `urgent`"))
        .unwrap_or_else(|| panic!("the bind's log line: {out}"));
    // TIME LEVEL SCOPE: TEXT
    let cells: Vec<&str> = line.split_whitespace().collect();
    assert!(cells[0].ends_with('Z') && cells[0].contains('T'), "{line}");
    assert_eq!(cells[1..3], ["INFO", "alerts:"], "{line}");
    let (ok, _, err) = broker(&["plugin", "logs", "no-such-plugin", "--server", &url]);
    assert!(!ok && err.contains("plugin_not_found"), "{err}");

    // --follow prints lines logged after it started: a new binding logs one.
    let mut follower = Command::new(bin())
        .args([
            "plugin",
            "logs",
            "urgent-router",
            "--follow",
            "--server",
            &url,
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (lines_tx, lines) = std::sync::mpsc::channel();
    let stdout = follower.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    // The lines already there come first (the follower is running once they have).
    let seen = lines
        .recv_timeout(WAIT)
        .expect("the follower prints the kept lines");
    assert!(seen.contains("takes bodies starting with"), "{seen}");
    c.declare_queue("ops", QueueOptions::durable())
        .await
        .unwrap();
    c.bind(Binding {
        exchange: "alerts".into(),
        queue: "ops".into(),
        key: "deploy".into(),
        arguments: Headers::new(),
    })
    .await
    .unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    let followed = loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = lines.recv_timeout(left).expect("the new line, followed");
        if line.contains("starting with `deploy`") {
            break line;
        }
    };
    assert!(followed.contains("INFO  alerts:"), "{followed}");
    follower.kill().unwrap();
    follower.wait().unwrap();

    // `broker exchanges` fits the columns to a type name longer than the standard ones.
    let (ok, out, err) = broker(&["exchanges", "--server", &url]);
    assert!(ok, "{err}");
    let header = out.lines().next().unwrap();
    let state_at = header.find("STATE").unwrap();
    let alerts = out.lines().find(|l| l.starts_with("alerts")).unwrap();
    assert_eq!(alerts.find("urgent-router"), header.find("TYPE"), "{out}");
    for row in out.lines().skip(1) {
        assert_eq!(row.get(state_at..), Some("ok"), "{out}");
    }

    // Its calls' p99 is shown as the bound the histogram gives.
    let (ok, out, err) = broker(&["plugin", "list", "--server", &url]);
    assert!(ok, "{err}");
    let row = out
        .lines()
        .find(|l| l.starts_with("urgent-router"))
        .unwrap_or_else(|| panic!("{out}"));
    let p99 = row.split_whitespace().nth(5).unwrap();
    assert!(p99.starts_with('≤'), "{row}");
}

#[tokio::test(flavor = "multi_thread")]
async fn new_handler_builds_tests_deploys_and_handles() {
    let dir = tempfile::tempdir().unwrap();
    let wasm = new_and_build(dir.path(), "shout", "handler");

    let (ok, out, err) = broker(&[
        "plugin",
        "test",
        &wasm,
        "--config",
        "to=loud",
        "--message",
        r#"{"body":"hello"}"#,
        "--message",
        r#"{"body":""}"#,
    ]);
    assert!(ok, "plugin test: {err}");
    let lines: Vec<&str> = out.lines().filter(|l| l.starts_with("message")).collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(lines[0].contains("ack; published 1 [``/`loud`]"), "{out}");
    assert!(lines[1].contains("reject: empty body"), "{out}");

    let broker_under_test = TestBroker::start().await;
    let url = broker_under_test.url();
    deploy(&url, "shout", &wasm);

    let c = broker_under_test.client().await;
    for queue in ["in", "loud"] {
        c.declare_queue(queue, QueueOptions::durable())
            .await
            .unwrap();
    }
    c.attach_handler(AttachHandler {
        queue: "in".into(),
        plugin: "shout".into(),
        mode: HandlerMode::Consume,
        concurrency: 1,
        config: BTreeMap::from([("to".to_owned(), "loud".to_owned())]),
    })
    .await
    .unwrap();
    c.confirm_select().await.unwrap();
    c.publish(Message::text("in", "hello"), false)
        .await
        .unwrap();
    let copied = wait_for(|| async {
        let bodies = bodies(&c, "loud").await;
        (!bodies.is_empty()).then_some(bodies)
    })
    .await;
    assert_eq!(copied, ["HELLO"]);
}

/// The issue's trap: an exchange that routes on the body but declares
/// `Capabilities::KEY_ONLY` (copied from a key-routing example). Its results would be
/// cached by routing key; instead it is refused, by `plugin test` and by the broker, with
/// an error that says what to declare.
#[tokio::test(flavor = "multi_thread")]
async fn key_only_exchange_that_reads_the_body_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let crate_dir = dir.path().join("liar");
    let crate_path = crate_dir.to_str().unwrap();
    let (ok, _, err) = broker(&["plugin", "new", "liar", "--dir", crate_path]);
    assert!(ok, "{err}");
    let lib = crate_dir.join("src/lib.rs");
    let honest = std::fs::read_to_string(&lib).unwrap();
    let declared = "Capabilities {\n            reads_body: true,\n            ..Capabilities::default()\n        }";
    assert!(
        honest.contains(declared),
        "the template declares reads_body"
    );
    std::fs::write(&lib, honest.replace(declared, "Capabilities::KEY_ONLY")).unwrap();
    // Its native tests catch it first.
    let (ok, out) = cargo_test(&crate_dir);
    assert!(!ok, "{out}");
    assert!(
        out.contains("routes_on_the_first_word_of_the_body ... FAILED"),
        "{out}"
    );
    let (ok, out, err) = broker(&["plugin", "build", crate_path]);
    assert!(ok, "plugin build: {err}");
    let wasm = out.lines().last().unwrap().to_owned();

    let (ok, _, err) = broker(&["plugin", "test", &wasm]);
    assert!(!ok);
    assert!(err.contains("a deploy would refuse this plugin"), "{err}");
    assert!(err.contains("declares key_only"), "{err}");
    assert!(err.contains("reads_body: true"), "{err}");

    let broker_under_test = TestBroker::start().await;
    let url = broker_under_test.url();
    let (ok, _, err) = broker(&["plugin", "deploy", "liar", &wasm, "--server", &url]);
    assert!(!ok);
    assert!(err.contains("invalid_plugin"), "{err}");
    assert!(err.contains("reads_body: true"), "{err}");
    let c = broker_under_test.client().await;
    let err = c
        .declare_exchange("x", "liar", false, Headers::new())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("liar"), "not deployed: {err}");
}
