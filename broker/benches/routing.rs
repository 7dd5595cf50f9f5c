//! Per-message routing cost of the topic exchange: the native Rust matcher (the plugin
//! crate called directly) against the same matcher as a Wasm plugin through the host,
//! single and batched, with and without the key cache, and the cost of the limits.
//!
//! Run: `cargo bench -p broker --bench routing` (release). Prints one table.

use std::hint::black_box;
use std::time::{Duration, Instant};

use broker::exchange::{BindingId, Exchange};
use broker::message::{Headers, Message};
use broker::plugin::{Limits, PluginExchange, PluginHost};
use broker_plugin_sdk::Exchange as _;
use exchange_topic::Topic;

/// Distinct routing keys cycled through (fewer than the key cache holds).
const KEYS: usize = 1000;
const MEASURE_FOR: Duration = Duration::from_millis(400);

fn patterns(bindings: usize) -> Vec<String> {
    (0..bindings)
        .map(|i| match i % 5 {
            0 => format!("stock.s{i}.*"),
            1 => format!("stock.*.s{i}"),
            2 => format!("#.s{i}"),
            3 => format!("s{i}.#"),
            _ => format!("*.s{}.nyse", i % 97),
        })
        .collect()
}

fn keys(bindings: usize) -> Vec<String> {
    (0..KEYS)
        .map(|j| {
            let i = j % bindings.max(1);
            match j % 3 {
                0 => format!("stock.s{i}.nyse"),
                1 => format!("x.s{}.nyse", i % 97),
                _ => format!("quote.s{j}.lse.extra"),
            }
        })
        .collect()
}

/// Runs `round` (which routes `per_round` messages) for a while; returns ns per message.
fn measure(per_round: usize, mut round: impl FnMut()) -> f64 {
    for _ in 0..3 {
        round();
    }
    let started = Instant::now();
    let mut rounds = 0u64;
    while started.elapsed() < MEASURE_FOR {
        round();
        rounds += 1;
    }
    started.elapsed().as_nanos() as f64 / (rounds as f64 * per_round as f64)
}

fn native(bindings: usize) -> f64 {
    let mut topic = Topic::new("bench", &broker_plugin_sdk::Headers::new()).unwrap();
    for (id, pattern) in patterns(bindings).iter().enumerate() {
        topic
            .bind(id as u64, pattern, &broker_plugin_sdk::Headers::new())
            .unwrap();
    }
    let msgs: Vec<_> = keys(bindings)
        .into_iter()
        .map(broker_plugin_sdk::Message::new)
        .collect();
    let mut out = Vec::new();
    measure(msgs.len(), || {
        for msg in &msgs {
            out.clear();
            topic.route(msg, &mut out);
            black_box(&out);
        }
    })
}

fn wasm_exchange(host: &PluginHost, bindings: usize) -> PluginExchange {
    typed_exchange(host, "topic", bindings)
}

/// An exchange of `type_name` with the benchmark's topic patterns as binding keys.
fn typed_exchange(host: &PluginHost, type_name: &str, bindings: usize) -> PluginExchange {
    let mut ex = host
        .create_exchange(type_name, "bench", &Headers::new())
        .unwrap();
    for (id, pattern) in patterns(bindings).iter().enumerate() {
        ex.bind(id as BindingId, pattern, &Headers::new()).unwrap();
    }
    ex
}

fn wasm(limits: Limits, bindings: usize, batched: bool) -> f64 {
    wasm_typed(limits, "topic", bindings, batched)
}

fn wasm_typed(limits: Limits, type_name: &str, bindings: usize, batched: bool) -> f64 {
    let host = PluginHost::with_standard_exchanges(limits).unwrap();
    let mut ex = typed_exchange(&host, type_name, bindings);
    let msgs: Vec<Message> = keys(bindings)
        .into_iter()
        .map(|k| Message::text(k, "body"))
        .collect();
    let refs: Vec<&Message> = msgs.iter().collect();
    let mut out = Vec::new();
    let ns = measure(msgs.len(), || {
        if batched {
            for chunk in refs.chunks(256) {
                black_box(ex.route_batch(chunk));
            }
        } else {
            for msg in &msgs {
                out.clear();
                ex.route(msg, &mut out).unwrap();
                black_box(&out);
            }
        }
    });
    assert_eq!(host.stats(type_name).unwrap().errors, 0);
    ns
}

fn main() {
    let no_cache = Limits {
        key_cache_entries: 0,
        ..Limits::default()
    };
    let unmetered = Limits {
        meter_fuel: false,
        call_deadline: None,
        ..no_cache.clone()
    };
    let fuel_only = Limits {
        call_deadline: None,
        ..no_cache.clone()
    };
    let started = Instant::now();
    let host = PluginHost::with_standard_exchanges(Limits::default()).unwrap();
    println!(
        "startup: compiling the 4 standard plugins took {:.1} ms",
        started.elapsed().as_secs_f64() * 1e3
    );
    let started = Instant::now();
    let mut ex = wasm_exchange(&host, 1000);
    println!(
        "declaring a topic exchange and binding 1000 patterns took {:.1} ms",
        started.elapsed().as_secs_f64() * 1e3
    );
    let started = Instant::now();
    ex.reset();
    let mut out = Vec::new();
    ex.route(&Message::text("stock.s0.nyse", ""), &mut out)
        .unwrap();
    println!(
        "restarting its instance (replaying 1000 bindings) took {:.1} ms",
        started.elapsed().as_secs_f64() * 1e3
    );
    println!("topic exchange, ns per message ({KEYS} distinct keys, cycled)");
    println!(
        "{:<48} {:>12} {:>12}",
        "case", "10 bindings", "1000 bindings"
    );
    // `cargo bench -p broker --bench routing -- floor` runs the rows containing "floor".
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let row = |name: &str, f: &dyn Fn(usize) -> f64| {
        if !filter.is_empty() && !filter.iter().any(|f| name.contains(f.as_str())) {
            return;
        }
        println!("{name:<48} {:>12.0} {:>12.0}", f(10), f(1000));
    };
    row("native Rust matcher", &native);
    row("wasm single, no cache (fuel + deadline)", &|n| {
        wasm(no_cache.clone(), n, false)
    });
    row("wasm batched x256, no cache (fuel + deadline)", &|n| {
        wasm(no_cache.clone(), n, true)
    });
    row("wasm single, key cache", &|n| {
        wasm(Limits::default(), n, false)
    });
    row("wasm batched x256, key cache", &|n| {
        wasm(Limits::default(), n, true)
    });
    row("wasm single, no cache, fuel only", &|n| {
        wasm(fuel_only.clone(), n, false)
    });
    row("wasm single, no cache, no fuel, no deadline", &|n| {
        wasm(unmetered.clone(), n, false)
    });
    row("wasm batched, no cache, no fuel, no deadline", &|n| {
        wasm(unmetered.clone(), n, true)
    });
    // The floor: the same calls into a plugin whose matcher is one hash lookup.
    row("floor: direct exchange, single, no cache", &|n| {
        wasm_typed(no_cache.clone(), "direct", n, false)
    });
    row("floor: direct exchange, batched x256, no cache", &|n| {
        wasm_typed(no_cache.clone(), "direct", n, true)
    });
}
