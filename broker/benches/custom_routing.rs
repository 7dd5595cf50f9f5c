//! Per-message routing cost of the extra bundled exchanges (consistent-hash, json-router,
//! random, schema-gate) as Wasm plugins through the host, single calls and batches of 256,
//! with the default limits (fuel and deadline; none of them is key-only, so no key cache).
//!
//! Run: `cargo bench -p broker --bench custom_routing` (release). Prints one table.

use std::hint::black_box;
use std::time::{Duration, Instant};

use broker::exchange::{BindingId, Exchange};
use broker::message::{Headers, Message};
use broker::plugin::{Limits, PluginExchange, PluginHost};
use serde_json::json;

const MESSAGES: usize = 1000;
const MEASURE_FOR: Duration = Duration::from_millis(400);

/// A 190-byte order, as JSON.
const ORDER: &str = r#"{"id": 12345, "amount": 150.5, "currency": "EUR", "country": "DE", "email": "someone@example.com", "order": {"status": "paid", "items": [{"sku": "A-1", "qty": 2}]}, "note": null}"#;

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

fn args(value: serde_json::Value) -> Headers {
    value.as_object().cloned().unwrap_or_default()
}

/// (type, exchange arguments, bindings as (key, arguments), messages)
type Case = (&'static str, Headers, Vec<(String, Headers)>, Vec<Message>);

fn cases() -> Vec<Case> {
    let keyed: Vec<Message> = (0..MESSAGES)
        .map(|i| Message::text(format!("customer-{i}"), ORDER))
        .collect();
    let orders: Vec<Message> = (0..MESSAGES)
        .map(|_| Message::text("payment", ORDER))
        .collect();
    let expressions = [
        r#"amount > 100 && country == "DE""#,
        r#"order.status in ["paid", "shipped"]"#,
        "exists(email) && !exists(order.hold)",
        r#"currency == "USD" || amount >= 1000"#,
        "order.items.0.qty > 1",
    ];
    let schema = json!({"type": "object", "required": ["id", "amount", "currency"],
        "properties": {"id": {"type": "integer", "minimum": 1},
            "amount": {"type": "number", "minimum": 0},
            "currency": {"type": "string", "enum": ["EUR", "USD"]},
            "email": {"type": "string", "minLength": 3},
            "order": {"type": "object", "properties": {"status": {"type": "string"},
                "items": {"type": "array", "items": {"type": "object", "required": ["sku"]}}}}}});
    vec![
        (
            "consistent-hash",
            Headers::new(),
            (0..10).map(|_| ("1".to_owned(), Headers::new())).collect(),
            keyed.clone(),
        ),
        (
            "random",
            Headers::new(),
            (0..10).map(|_| (String::new(), Headers::new())).collect(),
            keyed,
        ),
        (
            "json-router",
            Headers::new(),
            (0..10)
                .map(|i| {
                    let rule = expressions[i % expressions.len()];
                    (String::new(), args(json!({ "match": rule })))
                })
                .collect(),
            orders.clone(),
        ),
        (
            "schema-gate",
            args(json!({ "schema": schema })),
            vec![
                ("payment".to_owned(), Headers::new()),
                ("#invalid".to_owned(), Headers::new()),
            ],
            orders,
        ),
    ]
}

fn exchange(host: &PluginHost, case: &Case) -> PluginExchange {
    let (type_name, arguments, bindings, _) = case;
    let mut ex = host.create_exchange(type_name, "bench", arguments).unwrap();
    for (id, (key, arguments)) in bindings.iter().enumerate() {
        ex.bind(id as BindingId, key, arguments).unwrap();
    }
    ex
}

fn main() {
    let started = Instant::now();
    let host = PluginHost::with_standard_exchanges(Limits::default()).unwrap();
    println!(
        "startup: compiling the {} bundled exchange plugins took {:.1} ms",
        broker::plugin::STANDARD_EXCHANGES.len(),
        started.elapsed().as_secs_f64() * 1e3
    );
    let alone = PluginHost::new(Limits::default()).unwrap();
    let mut each = Vec::new();
    for (name, wasm) in broker::plugin::STANDARD_EXCHANGES {
        let started = Instant::now();
        alone
            .load_blocking(&format!("copy-of-{name}"), wasm)
            .unwrap();
        each.push(format!(
            "{name} {} KB {:.0} ms",
            wasm.len() / 1024,
            started.elapsed().as_secs_f64() * 1e3
        ));
    }
    println!("compiling each alone: {}", each.join(", "));
    println!("ns per message (190-byte JSON body), default limits");
    println!("{:<20} {:>10} {:>12}", "type", "single", "batch x256");
    for case in cases() {
        let mut ex = exchange(&host, &case);
        let msgs = &case.3;
        let refs: Vec<&Message> = msgs.iter().collect();
        let mut out = Vec::new();
        let single = measure(msgs.len(), || {
            for msg in msgs {
                out.clear();
                ex.route(msg, &mut out).unwrap();
                black_box(&out);
            }
        });
        let batched = measure(msgs.len(), || {
            for chunk in refs.chunks(256) {
                black_box(ex.route_batch(chunk));
            }
        });
        assert_eq!(host.stats(case.0).unwrap().errors, 0);
        println!("{:<20} {:>10.0} {:>12.0}", case.0, single, batched);
    }
}
