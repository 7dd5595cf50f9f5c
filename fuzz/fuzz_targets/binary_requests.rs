#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| broker::fuzz::binary_requests(data));
