#![no_main]
//! Needs the test plugin `body-ids` built for wasm32 (tests/plugins):
//! `BROKER_FUZZ_PLUGIN=path/to/hostile_body_ids.wasm cargo +nightly fuzz run route_output`.

use std::sync::{Mutex, OnceLock};

use broker::exchange::Exchange as _;
use broker::message::Headers;
use broker::plugin::{Limits, PluginExchange, PluginHost};

fn exchange() -> &'static Mutex<PluginExchange> {
    static EXCHANGE: OnceLock<Mutex<PluginExchange>> = OnceLock::new();
    EXCHANGE.get_or_init(|| {
        let path = std::env::var("BROKER_FUZZ_PLUGIN").expect("BROKER_FUZZ_PLUGIN names the .wasm");
        let wasm = std::fs::read(&path).expect("read the plugin");
        let host = PluginHost::new(Limits::default()).expect("plugin host");
        host.load_blocking("body-ids", &wasm).expect("load the plugin");
        let none = Headers::new();
        let mut exchange = host
            .create_exchange("body-ids", "fuzz", &none)
            .expect("declare");
        exchange.bind(1, "a", &none).expect("bind");
        exchange.bind(2, "b", &none).expect("bind");
        Mutex::new(exchange)
    })
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut exchange = exchange().lock().unwrap();
    broker::fuzz::route_output(&mut exchange, &[1, 2], data);
});
