//! The standard exchange types, built from `plugins/*` by `build.rs` and embedded.

/// (type name, component bytes) of every bundled plugin.
pub const STANDARD_EXCHANGES: [(&str, &[u8]); 4] = [
    (
        "direct",
        include_bytes!(concat!(env!("OUT_DIR"), "/exchange_direct.wasm")),
    ),
    (
        "topic",
        include_bytes!(concat!(env!("OUT_DIR"), "/exchange_topic.wasm")),
    ),
    (
        "fanout",
        include_bytes!(concat!(env!("OUT_DIR"), "/exchange_fanout.wasm")),
    ),
    (
        "headers",
        include_bytes!(concat!(env!("OUT_DIR"), "/exchange_headers.wasm")),
    ),
];

/// Whether `name` is one of the bundled types (which custom plugins may not replace).
pub fn is_standard(name: &str) -> bool {
    STANDARD_EXCHANGES.iter().any(|(n, _)| *n == name)
}

/// (name, component bytes) of every bundled handler plugin; compiled on first use.
pub const STANDARD_HANDLERS: [(&str, &[u8]); 5] = [
    (
        "email-sender",
        include_bytes!(concat!(env!("OUT_DIR"), "/handler_email_sender.wasm")),
    ),
    (
        "loyalty",
        include_bytes!(concat!(env!("OUT_DIR"), "/handler_loyalty.wasm")),
    ),
    (
        "redact",
        include_bytes!(concat!(env!("OUT_DIR"), "/handler_redact.wasm")),
    ),
    (
        "enrich",
        include_bytes!(concat!(env!("OUT_DIR"), "/handler_enrich.wasm")),
    ),
    (
        "flaky",
        include_bytes!(concat!(env!("OUT_DIR"), "/handler_flaky.wasm")),
    ),
];

/// Whether `name` is a bundled handler (which custom plugins may not replace).
pub fn is_standard_handler(name: &str) -> bool {
    STANDARD_HANDLERS.iter().any(|(n, _)| *n == name)
}
