//! The `broker` command-line client against the real binary.

mod common;
#[path = "support/hostile.rs"]
mod hostile;

use std::process::Command;

use common::{BrokerProcess, bin, run_cli};

/// Each of the left-aligned `columns` starts at the same character in the header and in every row that
/// has a cell there (indented note lines excepted).
fn assert_columns_aligned(out: &str, columns: &[&str]) {
    let mut lines = out.lines();
    let header = lines.next().expect("a header");
    let header: Vec<char> = header.chars().collect();
    for column in columns {
        let column: Vec<char> = column.chars().collect();
        let at = header
            .windows(column.len())
            .position(|w| w == column)
            .unwrap_or_else(|| panic!("no column {column:?} in {out}"));
        for row in out.lines().skip(1).filter(|l| !l.starts_with("  ")) {
            let row: Vec<char> = row.chars().collect();
            assert!(
                row.len() > at && row[at - 1] == ' ' && row[at - 2] == ' ' && row[at] != ' ',
                "column {column:?} not aligned at {at}:\n{out}"
            );
        }
    }
}

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
    // `--count 2` took no more than 2: the third was never delivered.
    let (ok, out, err) = run_cli(&["consume", "orders", "--count", "1"], &url);
    assert!(ok, "{err}");
    let third: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(third["redelivered"], false, "{third}");
    assert_eq!(third["delivery_count"], 1, "{third}");
    let (ok, _, err) = run_cli(&["publish", "orders", "--body", "last"], &url);
    assert!(ok, "{err}");

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
    assert_columns_aligned(&out, &["KIND", "SHA256"]);

    let (ok, out, _) = run_cli(&["plugin", "history", "router"], &url);
    assert!(ok);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "a header and two versions: {out}");
    assert!(lines[2].starts_with('*'), "version 2 active: {out}");
    assert_columns_aligned(&out, &["DEPLOYED (UTC)", "BY", "SHA256"]);
    for row in &lines[1..] {
        // [*] VERSION TIME BY BYTES SHA256
        let cells: Vec<&str> = row.trim_start_matches('*').split_whitespace().collect();
        let time = cells[1];
        assert!(
            time.len() >= 20 && time.as_bytes()[10] == b'T' && time.ends_with('Z'),
            "RFC 3339 time: {row}"
        );
        assert!(time.starts_with("20"), "{row}");
        // The user the CLI logged in as, not "connection N".
        assert_eq!(cells[2], "guest", "{row}");
    }

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

    // --sample: the CLI runs the user's messages first and uploads nothing if one fails.
    let samples = dir.path().join("samples.jsonl");
    std::fs::write(
        &samples,
        "{\"routing_key\":\"a\"}\n{\"routing_key\":\"boom\"}\n",
    )
    .unwrap();
    std::fs::write(&wasm, hostile::plugin("body")).unwrap();
    let sample_arg = samples.to_str().unwrap();
    let deploy = ["plugin", "deploy", "router", path, "--sample", sample_arg];
    let (ok, out, err) = run_cli(&deploy, &url);
    assert!(ok, "the body plugin routes both: {out}{err}");
    assert!(out.contains("plugin router version 3 active"), "{out}");
    std::fs::write(&wasm, hostile::plugin("trap")).unwrap();
    let (ok, out, err) = run_cli(&[&deploy[..], &["--binding", "a"]].concat(), &url);
    assert!(!ok);
    assert!(
        out.contains("bindings 1 (`a`)") && out.contains("FAILED"),
        "{out}"
    );
    assert!(err.contains("not deployed: 1 of 2 messages"), "{err}");
    let (_, out, _) = run_cli(&["plugin", "history", "router"], &url);
    assert_eq!(out.lines().count(), 4, "nothing uploaded: {out}");
}

/// Runs `broker bench ARGS` (with `--embedded` unless `server` is given) and returns its
/// one line, checked against the documented format: the common fields first, the broker's
/// CPU and `encoding=` last.
fn bench_line(args: &[&str], server: Option<&str>) -> String {
    let mut command = Command::new(bin());
    command.arg("bench").args(args);
    match server {
        Some(url) => command.args(["--server", url]),
        None => command.arg("--embedded"),
    };
    let out = command.output().unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "{stdout}");
    let line = lines[0].to_owned();
    let fields: Vec<&str> = line
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
        "{line}"
    );
    assert_eq!(
        &fields[fields.len() - 4..],
        [
            "broker_cpu_cores",
            "max_thread_share",
            "max_thread",
            "encoding"
        ],
        "{line}"
    );
    assert!(
        line.starts_with(&format!("scenario={} msgs=", args[0])),
        "{line}"
    );
    let encoding = if args.contains(&"binary") {
        "binary"
    } else if args.contains(&"amqp") {
        "amqp"
    } else if args.contains(&"stomp") {
        "stomp"
    } else {
        "json"
    };
    assert!(line.ends_with(&format!(" encoding={encoding}")), "{line}");
    line
}

/// The value of `key=` in a bench line.
fn field<'a>(line: &'a str, key: &str) -> &'a str {
    line.split(' ')
        .find_map(|f| f.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {key}= in {line}"))
}

/// A tiny run of each quick bench scenario: one line each, in the documented format.
#[test]
fn bench_scenarios_print_one_line_each() {
    for args in [
        &["persistent", "--msgs", "300"][..],
        &["transient", "--msgs", "300"],
        &["persistent", "--msgs", "300", "--encoding", "binary"],
        // The same scenarios over AMQP 0-9-1 (lapin against the embedded AMQP listener).
        &["persistent", "--msgs", "300", "--protocol", "amqp"],
        &["transient", "--msgs", "300", "--protocol", "amqp"],
        &["fanout", "--msgs", "100", "--protocol", "amqp"],
        // And over STOMP 1.2 (TCP, the embedded STOMP listener).
        &["persistent", "--msgs", "300", "--protocol", "stomp"],
        &["transient", "--msgs", "300", "--protocol", "stomp"],
        &["topic", "--msgs", "300", "--bindings", "20"],
        &["fanout", "--msgs", "100"],
        &["handler", "--msgs", "300"],
        // Two seconds at 2,000/s: one redeploy at the one-second mark.
        &["reload", "--msgs", "4000", "--rate", "2000"],
        &["startup", "--plugins", "1"],
    ] {
        let line = bench_line(args, None);
        if args[0] == "reload" {
            assert!(line.contains(" deploys=1 "), "{line}");
        }
        // --embedded: the broker's CPU is the own process's, always readable.
        let cores: f64 = field(&line, "broker_cpu_cores").parse().unwrap();
        assert!(cores >= 0.0, "{line}");
    }
}

/// `--queues N`: N independent publisher → queue → consumer pairs, every message arriving.
#[test]
fn bench_queue_pairs() {
    for scenario in ["persistent", "transient"] {
        let args = [
            scenario,
            "--msgs",
            "601",
            "--queues",
            "3",
            "--publishers",
            "3",
            "--consumers",
            "3",
        ];
        let line = bench_line(&args, None);
        assert_eq!(field(&line, "queues"), "3", "{line}");
        assert_eq!(field(&line, "msgs"), "601", "{line}");
        assert_ne!(field(&line, "p50_us"), "-", "{line}");
    }
}

/// `flood` against a broker process with a watermark 48 MiB above its own footprint:
/// blocked, unblocked once drained, nothing lost; its RSS and CPU read from /proc (the
/// process found from the --server port).
#[test]
fn bench_flood_blocks_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let baseline = {
        let process = BrokerProcess::spawn(dir.path());
        // A first request, so the footprint includes a connection.
        run_cli(&["queues"], &process.url);
        resident_kib(process.child.id()) * 1024
    };
    let watermark = (baseline + (48 << 20)).to_string();
    let process = BrokerProcess::spawn_with(dir.path(), &["--memory-high-watermark", &watermark]);
    let http = process.http_url.trim_end_matches('/').to_owned();
    let args = [
        "flood", "--size", "65536", "--msgs", "4000", "--http", &http,
    ];
    let line = bench_line(&args, Some(&process.url));
    assert_eq!(field(&line, "blocked"), "yes", "{line}");
    assert_eq!(field(&line, "unblocked"), "yes", "{line}");
    assert_eq!(field(&line, "lost"), "0", "{line}");
    let watermark_mib: f64 = field(&line, "watermark_mib").parse().unwrap();
    let expected = watermark.parse::<f64>().unwrap() / 1048576.0;
    assert!((watermark_mib - expected).abs() <= 1.0, "{line}");
    let peak: u64 = field(&line, "peak_rss_mib").parse().unwrap();
    assert!(peak > 0, "{line}");
    assert_ne!(field(&line, "broker_cpu_cores"), "-", "{line}");
}

fn resident_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// `isolation`: a victim exchange served next to a hostile plugin (the memory hog, only on
/// its trigger key), and alone. Functional only: every victim message confirmed and
/// delivered, the hostile publishes answered with errors.
#[test]
fn bench_isolation_serves_the_victim_next_to_a_hostile_plugin() {
    let dir = tempfile::tempdir().unwrap();
    let wasm = dir.path().join("hostile_alloc.wasm");
    std::fs::write(&wasm, hostile::plugin("alloc")).unwrap();
    let plugin = wasm.to_str().unwrap();
    let common = ["--rate", "500", "--msgs", "600", "--hostile-rate", "50"];
    let line = bench_line(
        &[
            &["isolation", "--hostile", "memory", "--plugin", plugin][..],
            &common,
        ]
        .concat(),
        None,
    );
    assert_eq!(field(&line, "hostile"), "memory", "{line}");
    assert_ne!(field(&line, "confirm_p99_us"), "-", "{line}");
    let sent: u64 = field(&line, "hostile_sent").parse().unwrap();
    let failed: u64 = field(&line, "hostile_failed").parse().unwrap();
    assert!(sent > 0 && failed > 0 && failed <= sent, "{line}");

    let alone = bench_line(
        &[&["isolation", "--hostile", "none"][..], &common].concat(),
        None,
    );
    assert_eq!(field(&alone, "hostile_sent"), "0", "{alone}");
    assert_ne!(field(&alone, "confirm_p999_us"), "-", "{alone}");
}

/// `plugin test` runs a component in the real host without a broker: per message the
/// bindings chosen, or the failure with the guest's panic text; messages from
/// `--message` and from a `--sample` file of JSON lines.
#[test]
fn plugin_test_routes_samples_and_shows_the_panic_text() {
    let dir = tempfile::tempdir().unwrap();
    let wasm = dir.path().join("trap.wasm");
    std::fs::write(&wasm, hostile::plugin("trap")).unwrap();
    let samples = dir.path().join("samples.jsonl");
    std::fs::write(
        &samples,
        "{\"routing_key\":\"b\",\"body\":\"x\"}\n\n{\"routing_key\":\"boom\"}\n",
    )
    .unwrap();
    let out = Command::new(bin())
        .args(["plugin", "test", wasm.to_str().unwrap()])
        .args(["--binding", "a", "--binding", "b"])
        .args(["--message", r#"{"routing_key":"a"}"#])
        .args(["--sample", samples.to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(!out.status.success(), "a message failed: {stdout}");
    let lines: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("message"))
        .collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    assert!(lines[0].contains("bindings 1 (`a`)"), "{stdout}");
    // What the call cost: time and fuel.
    assert!(lines[0].contains("us, fuel "), "{stdout}");
    assert!(lines[1].contains("bindings 2 (`b`)"), "{stdout}");
    assert!(
        lines[2].contains("FAILED") && lines[2].contains("panicked at"),
        "{stdout}"
    );
    assert!(stderr.contains("1 of 3 messages failed"), "{stderr}");

    let out = Command::new(bin())
        .args(["plugin", "test", wasm.to_str().unwrap()])
        .args(["--message", "{not json"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("--message 1"), "{stderr}");
}

/// Issue 13: every command takes the broker and login from a config file
/// (`~/.config/broker/config.toml`, or `$BROKER_CONFIG`); a flag beats its environment
/// variable, which beats the file, which beats the default.
#[test]
fn config_file_gives_commands_their_server_and_login_below_flags_and_env() {
    let dir = tempfile::tempdir().unwrap();
    let process = BrokerProcess::spawn(dir.path());
    let url = process.url.clone();
    let home = tempfile::tempdir().unwrap();
    let config_dir = home.path().join(".config").join("broker");
    std::fs::create_dir_all(&config_dir).unwrap();
    let config = config_dir.join("config.toml");
    let cli = |args: &[&str], env: &[(&str, &str)]| {
        let mut command = Command::new(bin());
        command.args(args).env("HOME", home.path());
        for var in [
            "XDG_CONFIG_HOME",
            "BROKER_CONFIG",
            "BROKER_URL",
            "BROKER_USER",
            "BROKER_PASSWORD",
            "BROKER_VHOST",
        ] {
            command.env_remove(var);
        }
        let out = command.envs(env.iter().copied()).output().unwrap();
        (
            out.status.success(),
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        )
    };
    let dead = "ws://127.0.0.1:1";

    // Without a file (and without --server) the default server: nobody there.
    let (ok, _, err) = cli(&["queues"], &[]);
    assert!(!ok && err.contains("ws://127.0.0.1:6789"), "{err}");

    // The file's server, for a data command and admin commands alike.
    std::fs::write(&config, format!("server = \"{url}\"\n")).unwrap();
    for args in [
        &["declare", "queue", "from-file"][..],
        &["user", "add", "ann", "pw"],
        &["vhost", "add", "staging"],
        &[
            "permissions",
            "set",
            "ann",
            ".*",
            ".*",
            ".*",
            "--in",
            "staging",
        ],
    ] {
        let (ok, _, err) = cli(args, &[]);
        assert!(ok, "{args:?}: {err}");
    }
    let (ok, out, err) = cli(&["queues"], &[]);
    assert!(ok && out.contains("from-file"), "{out}{err}");

    // BROKER_URL beats the file; --server beats BROKER_URL.
    let (ok, _, err) = cli(&["queues"], &[("BROKER_URL", dead)]);
    assert!(!ok && err.contains(dead), "{err}");
    let (ok, out, err) = cli(&["queues", "--server", &url], &[("BROKER_URL", dead)]);
    assert!(ok && out.contains("from-file"), "{out}{err}");

    // The file's user, password and vhost: ann works in `staging` and is no administrator.
    let login =
        format!("server = \"{url}\"\nuser = \"ann\"\npassword = \"pw\"\nvhost = \"staging\"\n");
    std::fs::write(&config, login).unwrap();
    let (ok, _, err) = cli(&["declare", "queue", "in-staging"], &[]);
    assert!(ok, "{err}");
    let (ok, out, err) = cli(&["queues"], &[]);
    assert!(
        ok && out.contains("in-staging") && !out.contains("from-file"),
        "{out}{err}"
    );
    let (ok, _, err) = cli(&["user", "list"], &[]);
    assert!(!ok && err.contains("access_refused"), "{err}");
    // Flags and environment variables beat the file's login and vhost.
    let as_guest = ["--user", "guest", "--password", "guest", "--vhost", "/"];
    let (ok, out, err) = cli(&[&["user", "list"][..], &as_guest].concat(), &[]);
    assert!(ok && out.contains("ann"), "{out}{err}");
    let guest = [
        ("BROKER_USER", "guest"),
        ("BROKER_PASSWORD", "guest"),
        ("BROKER_VHOST", "/"),
    ];
    let (ok, out, err) = cli(&["queues"], &guest);
    assert!(
        ok && out.contains("from-file") && !out.contains("in-staging"),
        "{out}{err}"
    );

    // $BROKER_CONFIG names the file instead; an unknown setting is a clear error.
    let other = home.path().join("other.toml");
    std::fs::write(&other, format!("server = \"{dead}\"\n")).unwrap();
    let (ok, _, err) = cli(&["queues"], &[("BROKER_CONFIG", other.to_str().unwrap())]);
    assert!(!ok && err.contains(dead), "{err}");
    std::fs::write(&config, "servr = \"ws://x:1\"\n").unwrap();
    let (ok, _, err) = cli(&["queues"], &[]);
    assert!(
        !ok && err.contains("config.toml") && err.contains("servr"),
        "{err}"
    );
}
