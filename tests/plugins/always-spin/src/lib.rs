//! Loops forever on every message: deploy validation must refuse it.

common::hostile_plugin!(|keyed, msg, out| {
    let _ = (keyed, msg, out);
    loop {
        std::hint::black_box(());
    }
});
