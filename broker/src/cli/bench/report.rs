//! The one line every scenario prints, and the latency histograms it is made of.

use std::fmt;

use hdrhistogram::Histogram;
use tokio::task::JoinHandle;

use super::{Scenario, procfs};

/// The one line a run prints.
pub(super) struct Report {
    pub(super) scenario: Scenario,
    pub(super) msgs: u64,
    pub(super) secs: f64,
    /// `msgs / secs` unless the scenario says otherwise.
    pub(super) rate: f64,
    /// End to end, µs; empty when nothing was consumed (printed as `-`).
    pub(super) latency_us: Histogram<u64>,
    pub(super) confirm_us: Histogram<u64>,
    pub(super) extra: Vec<(&'static str, String)>,
    /// The broker's CPU over the measured interval (`-` when not readable).
    pub(super) cpu: Option<procfs::CpuUsage>,
}

impl Report {
    pub(super) fn new(scenario: Scenario, msgs: u64, secs: f64) -> Self {
        Report {
            scenario,
            msgs,
            secs,
            rate: msgs as f64 / secs,
            latency_us: new_histogram(),
            confirm_us: new_histogram(),
            extra: Vec::new(),
            cpu: None,
        }
    }

    pub(super) fn with(mut self, key: &'static str, value: impl fmt::Display) -> Self {
        self.extra.push((key, value.to_string()));
        self
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let quantile = |h: &Histogram<u64>, q: f64| match h.is_empty() {
            true => "-".to_string(),
            false => h.value_at_quantile(q).to_string(),
        };
        write!(
            f,
            "scenario={} msgs={} secs={:.3} rate={:.0} p50_us={} p99_us={} p999_us={} publish_confirm_p99_us={}",
            self.scenario.name(),
            self.msgs,
            self.secs,
            self.rate,
            quantile(&self.latency_us, 0.5),
            quantile(&self.latency_us, 0.99),
            quantile(&self.latency_us, 0.999),
            quantile(&self.confirm_us, 0.99),
        )?;
        for (key, value) in &self.extra {
            write!(f, " {key}={value}")?;
        }
        match &self.cpu {
            Some(cpu) => write!(
                f,
                " broker_cpu_cores={:.2} max_thread_share={:.2} max_thread={}",
                cpu.cores, cpu.max_share, cpu.max_thread
            ),
            None => write!(f, " broker_cpu_cores=- max_thread_share=- max_thread=-"),
        }
    }
}

/// Microseconds from 1 µs to 10 minutes at 3 significant digits; longer values saturate.
pub(super) fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

/// Waits for tasks that each return a histogram and merges them.
pub(super) async fn merged(
    tasks: Vec<JoinHandle<anyhow::Result<Histogram<u64>>>>,
) -> anyhow::Result<Histogram<u64>> {
    let mut all = new_histogram();
    for task in tasks {
        all.add(task.await??)?;
    }
    Ok(all)
}
