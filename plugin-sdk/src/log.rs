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
