//! The plugin host against hostile plugins: every misbehaviour is contained, counted,
//! and repeated failures quarantine the exchange, while healthy exchanges keep routing.

#[path = "support/hostile.rs"]
mod hostile;

use std::time::{Duration, Instant};

use broker::exchange::{BindingId, Exchange, ExchangeError, ExchangeTypes};
use broker::message::{Headers, Message, Properties};
use broker::plugin::{Limits, LoadError, PluginExchange, PluginHost};

fn host() -> PluginHost {
    PluginHost::with_standard_exchanges(Limits::default()).expect("host starts")
}

fn route(ex: &mut dyn Exchange, key: &str) -> Result<Vec<BindingId>, ExchangeError> {
    let mut out = Vec::new();
    ex.route(&Message::text(key, "body"), &mut out)?;
    out.sort_unstable();
    Ok(out)
}

fn failed(result: Result<Vec<BindingId>, ExchangeError>) -> String {
    match result {
        Err(ExchangeError::PluginFailed(reason)) => reason,
        other => panic!("expected PluginFailed, got {other:?}"),
    }
}

/// After a failure the next call gets a fresh instance with the bindings replayed.
fn assert_recovers(host: &PluginHost, plugin: &str, ex: &mut PluginExchange) {
    let before = host.stats(plugin).unwrap().instantiations;
    assert_eq!(route(ex, "a").unwrap(), vec![1]);
    assert_eq!(route(ex, "b").unwrap(), vec![2]);
    assert_eq!(host.stats(plugin).unwrap().instantiations, before + 1);
}

#[test]
fn infinite_loop_runs_out_of_fuel() {
    let host = host();
    let mut ex = hostile::exchange(&host, "spin");
    let started = Instant::now();
    let reason = failed(route(&mut ex, "spin"));
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert!(reason.contains("CPU budget"), "{reason}");
    let stats = host.stats("spin").unwrap();
    assert_eq!((stats.errors, stats.timeouts, stats.traps), (1, 1, 0));
    assert_recovers(&host, "spin", &mut ex);
}

#[test]
fn time_budget_stops_a_loop_fuel_would_allow() {
    let limits = Limits {
        fuel_per_call: u64::MAX / 4,
        call_deadline: Some(Duration::from_millis(100)),
        failing_time_per_sec: Duration::from_secs(1),
        ..Limits::default()
    };
    let host = PluginHost::new(limits).unwrap();
    let mut ex = hostile::exchange(&host, "spin");
    let started = Instant::now();
    let reason = failed(route(&mut ex, "spin"));
    let elapsed = started.elapsed();
    assert!(reason.contains("CPU budget (time)"), "{reason}");
    assert!(
        elapsed >= Duration::from_millis(75) && elapsed < Duration::from_secs(2),
        "{elapsed:?}"
    );
    assert_eq!(host.stats("spin").unwrap().timeouts, 1);
    assert_recovers(&host, "spin", &mut ex);
}

#[test]
fn runaway_allocation_hits_the_memory_cap() {
    let host = host();
    let mut ex = hostile::exchange(&host, "alloc");
    let reason = failed(route(&mut ex, "alloc"));
    // The 16 MiB cap or, first, the time each MiB of growth is charged.
    assert!(
        reason.contains("memory limit") || reason.contains("memory growth charged"),
        "{reason}"
    );
    let stats = host.stats("alloc").unwrap();
    assert_eq!(
        (stats.errors, stats.memory_exhausted + stats.timeouts),
        (1, 1)
    );
    assert_recovers(&host, "alloc", &mut ex);
}

#[test]
fn trap_is_contained() {
    let host = host();
    let mut ex = hostile::exchange(&host, "trap");
    let reason = failed(route(&mut ex, "boom"));
    // The SDK's panic hook reports the panic through `log`; the host keeps it as the reason.
    assert!(reason.starts_with("panicked at "), "{reason}");
    assert!(reason.ends_with(": boom"), "{reason}");
    let stats = host.stats("trap").unwrap();
    assert_eq!((stats.errors, stats.traps), (1, 1));
    assert_recovers(&host, "trap", &mut ex);
}

#[test]
fn unknown_binding_ids_are_rejected() {
    let host = host();
    let mut ex = hostile::exchange(&host, "bad-ids");
    let reason = failed(route(&mut ex, "bad"));
    assert!(reason.contains("424242"), "{reason}");
    assert_eq!(host.stats("bad-ids").unwrap().invalid_output, 1);
    assert_recovers(&host, "bad-ids", &mut ex);
}

#[test]
fn oversized_output_is_rejected() {
    let host = host();
    let mut ex = hostile::exchange(&host, "huge-output");
    let reason = failed(route(&mut ex, "huge"));
    // Refused for its size, or stopped while building it (8 MB of ids take time).
    assert!(
        reason.contains("more than the limit") || reason.contains("CPU budget"),
        "{reason}"
    );
    let stats = host.stats("huge-output").unwrap();
    assert_eq!(
        (stats.errors, stats.invalid_output + stats.timeouts),
        (1, 1)
    );
    assert_recovers(&host, "huge-output", &mut ex);
}

#[test]
fn wrong_abi_major_version_is_refused_at_load() {
    let host = host();
    let err = host
        .load_blocking("future", &hostile::plugin("wrong-abi"))
        .unwrap_err();
    assert!(
        matches!(&err, LoadError::IncompatibleAbi { found, supported: 1 } if found == "broker:plugin@2.0.0"),
        "{err:?}"
    );
    assert!(err.to_string().contains("rebuild"), "{err}");
    assert!(matches!(
        host.create("future", "x", &Headers::new()),
        Err(ExchangeError::UnknownType(_))
    ));
}

#[test]
fn bad_plugin_bytes_are_refused() {
    let host = host();
    let core_module = b"\0asm\x01\0\0\0";
    assert_eq!(
        host.load_blocking("core", core_module),
        Err(LoadError::CoreModule)
    );
    assert!(matches!(
        host.load_blocking("junk", b"not wasm at all"),
        Err(LoadError::Compile(_))
    ));
    assert!(matches!(
        host.load_blocking("Bad Name", b""),
        Err(LoadError::InvalidName(_))
    ));
    let trap = hostile::plugin("trap");
    assert_eq!(
        host.load_blocking("topic", &trap),
        Err(LoadError::ReservedName("topic".into()))
    );
    let small = PluginHost::new(Limits {
        max_module_bytes: 1000,
        ..Limits::default()
    })
    .unwrap();
    assert!(matches!(
        small.load_blocking("trap", &trap),
        Err(LoadError::TooLarge { limit: 1000, .. })
    ));
}

#[test]
fn repeated_failures_quarantine_until_reset() {
    let host = host();
    let mut ex = hostile::exchange(&host, "trap");
    for _ in 0..4 {
        failed(route(&mut ex, "boom"));
    }
    assert_eq!(
        route(&mut ex, "a").unwrap(),
        vec![1],
        "a success ends the streak"
    );
    for _ in 0..5 {
        failed(route(&mut ex, "boom"));
    }
    assert_eq!(host.is_quarantined("ex-trap"), Some(true));
    assert!(matches!(
        route(&mut ex, "a"),
        Err(ExchangeError::Unavailable(_))
    ));
    assert!(matches!(
        ex.bind(3, "c", &Headers::new()),
        Err(ExchangeError::Unavailable(_))
    ));
    let stats = host.stats("trap").unwrap();
    assert_eq!((stats.traps, stats.quarantines), (9, 1));

    let calls = stats.calls;
    assert!(matches!(
        route(&mut ex, "boom"),
        Err(ExchangeError::Unavailable(_))
    ));
    assert_eq!(
        host.stats("trap").unwrap().calls,
        calls,
        "quarantine makes no calls"
    );

    assert!(host.reset("ex-trap"));
    assert!(!host.reset("no-such-exchange"));
    assert_eq!(route(&mut ex, "b").unwrap(), vec![2]);
    assert_eq!(host.is_quarantined("ex-trap"), Some(false));
}

#[test]
fn healthy_exchanges_keep_routing_next_to_hostile_ones() {
    let host = host();
    let mut topic = host.create("topic", "healthy", &Headers::new()).unwrap();
    topic.bind(10, "stock.#", &Headers::new()).unwrap();
    let mut spin = hostile::exchange(&host, "spin");
    let mut alloc = hostile::exchange(&host, "alloc");
    for round in 0..6 {
        let spun = route(&mut spin, "spin");
        match round {
            0..5 => assert!(
                matches!(spun, Err(ExchangeError::PluginFailed(_))),
                "{spun:?}"
            ),
            _ => assert!(
                matches!(spun, Err(ExchangeError::Unavailable(_))),
                "{spun:?}"
            ),
        }
        assert!(route(&mut alloc, "alloc").is_err());
        assert_eq!(route(topic.as_mut(), "stock.ibm").unwrap(), vec![10]);
    }
    assert_eq!(host.is_quarantined("ex-spin"), Some(true));
    assert_eq!(host.is_quarantined("ex-alloc"), Some(true));
    assert_eq!(host.stats("topic").unwrap().errors, 0);
}

#[test]
fn batch_failure_fails_only_the_culprit() {
    let host = host();
    let mut ex = hostile::exchange(&host, "trap");
    let (a, boom, b) = (
        Message::text("a", ""),
        Message::text("boom", ""),
        Message::text("b", ""),
    );
    let results = ex.route_batch(&[&a, &b]);
    assert_eq!(results, vec![Ok(vec![1]), Ok(vec![2])]);
    let results = ex.route_batch(&[&a, &boom, &b]);
    assert_eq!(results[0], Ok(vec![1]));
    assert!(matches!(results[1], Err(ExchangeError::PluginFailed(_))));
    assert_eq!(
        results[2],
        Ok(vec![2]),
        "re-routed alone after the batch failed"
    );
    assert_eq!(
        host.stats("trap").unwrap().traps,
        1,
        "the failed batch is not counted, the culprit is"
    );
}

#[test]
fn body_and_properties_reach_the_plugin() {
    let host = host();
    let mut ex = hostile::exchange(&host, "body");
    let mut out = Vec::new();
    ex.route(&Message::text("ignored", "b"), &mut out).unwrap();
    assert_eq!(out, vec![2]);
    let skip = Message {
        properties: Properties {
            content_type: Some("application/x-skip".into()),
            ..Properties::default()
        },
        ..Message::text("ignored", "b")
    };
    out.clear();
    ex.route(&skip, &mut out).unwrap();
    assert!(out.is_empty());
    let (ma, mb) = (Message::text("x", "a"), Message::text("y", "b"));
    assert_eq!(
        ex.route_batch(&[&ma, &mb, &skip]),
        vec![Ok(vec![1]), Ok(vec![2]), Ok(vec![])]
    );
}

#[test]
fn fetching_bodies_in_a_loop_is_stopped() {
    let host = host();
    let mut ex = hostile::exchange(&host, "body");
    let big = Message::text("greedy", "x".repeat(1 << 20));
    let started = Instant::now();
    let reason = match ex.route(&big, &mut Vec::new()) {
        Err(ExchangeError::PluginFailed(reason)) => reason,
        other => panic!("expected PluginFailed, got {other:?}"),
    };
    // The copy allowance or, first, the time the copies take.
    assert!(
        reason.contains("bodies too often") || reason.contains("CPU budget"),
        "{reason}"
    );
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(host.stats("body").unwrap().errors, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_plugins_load_async_and_redeploy() {
    let host = host();
    let info = host.load("custom", hostile::plugin("trap")).await.unwrap();
    assert!(!info.bundled && info.abi_version == "1.0.0");
    assert!(host.plugins().iter().any(|p| p.name == "custom"));
    let mut ex = host.create("custom", "ex-custom", &Headers::new()).unwrap();
    ex.bind(1, "a", &Headers::new()).unwrap();
    for _ in 0..5 {
        failed(route(ex.as_mut(), "boom"));
    }
    assert!(matches!(
        route(ex.as_mut(), "a"),
        Err(ExchangeError::Unavailable(_))
    ));
    // Redeploying (here: a version that reads the body) lifts quarantine, keeps bindings.
    host.load("custom", hostile::plugin("body")).await.unwrap();
    let mut out = Vec::new();
    ex.route(&Message::text("x", "a"), &mut out).unwrap();
    assert_eq!(out, vec![1]);

    let stats: Vec<String> = host
        .all_stats()
        .into_iter()
        .map(|(name, _, _)| name)
        .collect();
    let mut want: Vec<&str> = broker::plugin::STANDARD_EXCHANGES
        .iter()
        .map(|(name, _)| *name)
        .chain(["custom"])
        .collect();
    want.sort_unstable();
    assert_eq!(stats, want);
    assert!(!host.unload("topic"), "standard types stay");
    assert!(host.unload("custom"));
    assert!(matches!(
        host.create("custom", "again", &Headers::new()),
        Err(ExchangeError::UnknownType(_))
    ));
    out.clear();
    ex.route(&Message::text("x", "a"), &mut out).unwrap();
    assert_eq!(out, vec![1], "live exchanges keep their plugin");
}

#[test]
fn pooling_allocator_hosts_exchanges() {
    let limits = Limits {
        pooled_instances: Some(4),
        ..Limits::default()
    };
    let host = PluginHost::with_standard_exchanges(limits).unwrap();
    let mut ex = host.create("direct", "pooled", &Headers::new()).unwrap();
    ex.bind(5, "k", &Headers::new()).unwrap();
    assert_eq!(route(ex.as_mut(), "k").unwrap(), vec![5]);
}

/// A key-only plugin is handed the routing key alone: one that reads the body anyway
/// (here only for key `peek`, so the deploy samples do not catch it) routes as if the
/// body were empty, so its key-cached results stay right, and its log says why.
#[test]
fn key_only_plugin_is_handed_no_body() {
    let host = host();
    let mut ex = hostile::exchange(&host, "key-only-peek");
    let mut out = Vec::new();
    ex.route(&Message::text("peek", "a"), &mut out).unwrap();
    assert!(
        out.is_empty(),
        "routed on a body it was not handed: {out:?}"
    );
    assert_eq!(route(&mut ex, "a").unwrap(), vec![1]);
    let logs = host.logs("key-only-peek", 0, 10).expect("it logged");
    assert!(
        logs.iter()
            .any(|l| l.level == "warn" && l.text.contains("declares key_only")),
        "{logs:?}"
    );
}
