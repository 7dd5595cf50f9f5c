//! Routes every message to a binding id that was never bound: deploy validation must
//! refuse it.

common::hostile_plugin!(|keyed, msg, out| {
    let _ = (keyed, msg);
    out.push(424_242);
});
