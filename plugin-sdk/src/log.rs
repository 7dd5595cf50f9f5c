//! Logging from a plugin into the broker's log.

/// Severity of a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

/// Writes `text` to the broker's log (natively, for unit tests: to stderr).
pub fn log(level: LogLevel, text: &str) {
    #[cfg(target_arch = "wasm32")]
    crate::__private::log(level, text);
    #[cfg(not(target_arch = "wasm32"))]
    eprintln!("[{level:?}] {text}");
}

/// Sends a panic's location and message to the broker's log before the panic traps, so
/// the broker reports `panicked at src/lib.rs:3:5: MESSAGE` as the failure instead of only
/// "unreachable executed". Installed once per instance by the export macros' `init`.
#[doc(hidden)]
pub fn __install_panic_hook() {
    #[cfg(target_arch = "wasm32")]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            std::panic::set_hook(Box::new(|info| log(LogLevel::Error, &panic_line(info))))
        });
    }
}

/// `panicked at FILE:LINE:COL: MESSAGE` (the host recognises the prefix).
#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
fn panic_line(info: &std::panic::PanicHookInfo<'_>) -> String {
    let payload = info.payload();
    let message = payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("Box<dyn Any>");
    match info.location() {
        Some(at) => format!(
            "panicked at {}:{}:{}: {message}",
            at.file(),
            at.line(),
            at.column()
        ),
        None => format!("panicked at an unknown location: {message}"),
    }
}
