#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| broker::fuzz::amqp_frames(data));
