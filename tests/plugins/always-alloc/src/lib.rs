//! Grows memory until refused on every message: deploy validation must refuse it.

common::hostile_plugin!(|keyed, msg, out| {
    let _ = (keyed, msg, out);
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        hoard.push(Vec::with_capacity(1 << 20));
        std::hint::black_box(&hoard);
    }
});
