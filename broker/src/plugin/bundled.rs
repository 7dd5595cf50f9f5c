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
