//! Returns a million ids for every message: deploy validation must refuse it.

common::hostile_plugin!(|keyed, msg, out| {
    let _ = msg;
    let id = keyed.any_binding().unwrap_or(1);
    out.reserve_exact(1_000_000);
    out.extend(std::iter::repeat_n(id, 1_000_000));
});
