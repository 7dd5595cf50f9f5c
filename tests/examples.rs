//! The runnable demos in `examples/`, run as a user would and checked by their output.

use std::process::Command;

fn run(bin: &str) -> String {
    run_with(bin, &[])
}

fn run_with(bin: &str, args: &[&str]) -> String {
    let out = Command::new(bin)
        .args(args)
        .env_remove("BROKER_URL")
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "{bin} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn work_queue_finishes_every_job_once_and_redelivers_the_failed_one() {
    let out = run(env!("CARGO_BIN_EXE_work-queue"));
    assert!(out.contains("all 9 jobs done exactly once"), "{out}");
    assert!(out.contains("failed, requeueing"), "{out}");
    assert!(out.contains("(redelivered)"), "{out}");
}

#[test]
fn rpc_matches_every_reply_to_its_call() {
    let out = run(env!("CARGO_BIN_EXE_rpc"));
    for n in 1..=5 {
        assert!(
            out.contains(&format!("{n}² = {} (call-{n})", n * n)),
            "{out}"
        );
    }
}

#[test]
fn retry_dlq_backs_off_then_dead_letters() {
    let out = run(env!("CARGO_BIN_EXE_retry-dlq"));
    assert!(out.contains("attempt 4 of payment-42"), "{out}");
    assert!(out.contains("reason=\"delivery_limit\""), "{out}");
}

#[test]
fn hot_reload_switches_lanes_once_without_losing_an_order() {
    let out = run_with(env!("CARGO_BIN_EXE_hot-reload"), &["--seconds", "4"]);
    assert!(out.contains("deployed plugin orders version 2"), "{out}");
    assert!(out.contains("each exactly once: true"), "{out}");
    assert!(
        out.contains("VIP orders changed lanes 1 time(s), standard -> express"),
        "{out}"
    );
    assert!(out.contains("zero loss"), "{out}");
}

#[test]
fn user_events_fan_out_to_two_handlers_and_a_remote_consumer() {
    let out = run(env!("CARGO_BIN_EXE_user-events"));
    for user in ["alice", "bob", "chloe"] {
        assert!(
            out.contains(&format!("sending welcome email to {user}@example.com")),
            "{out}"
        );
        assert!(
            out.contains(&format!("awarded 100 points to {user}")),
            "{out}"
        );
        assert!(
            out.contains(&format!(
                r#"audit consumer got user.signup {{"user":"{user}""#
            )),
            "{out}"
        );
    }
    assert!(out.contains("3 points events stored by loyalty"), "{out}");
    assert!(
        out.contains("handler email-sender on email: handled 3, acked 3"),
        "{out}"
    );
}

#[test]
fn live_page_traffic_switches_plugin_versions_back_and_forth() {
    let args = ["--seconds", "4", "--switch-every", "1"];
    let out = run_with(env!("CARGO_BIN_EXE_live-page"), &args);
    assert!(out.contains("open file://"), "{out}");
    assert!(
        out.contains("live-page/index.html?ws=ws://127.0.0.1:"),
        "{out}"
    );
    assert!(
        out.contains("plugin orders version 2 active (VIP orders -> express)"),
        "{out}"
    );
    // Back to version 1 by a rollback, not a new version.
    assert!(
        out.contains("plugin orders version 1 active (every order -> standard)"),
        "{out}"
    );
    assert!(!out.contains("version 3"), "{out}");
}
