//! The kernel profiler (`DEBERTA_CUDA_PROFILE=1`): device time per kernel entry point, from an
//! event pair around every launch ([`super::device::Gpu`] records them), printed as a table
//! when the device is dropped. Rows are named by the entry points of `kernels/*.cu`, which are
//! written out there in full.

use std::collections::BTreeMap;

use cudarc::driver::CudaEvent;

/// Per-kernel device time (`DEBERTA_CUDA_PROFILE=1`): an event pair around every launch,
/// folded into totals every few thousand launches and printed when the [`Gpu`] is dropped.
#[derive(Default)]
pub(super) struct Profile {
    pending: Vec<(String, CudaEvent, CudaEvent)>,
    /// kernel -> (total ms, launches)
    totals: BTreeMap<String, (f64, u64)>,
}

impl Profile {
    fn fold(&mut self) {
        for (name, start, end) in self.pending.drain(..) {
            let ms = start.elapsed_ms(&end).unwrap_or(f32::NAN) as f64;
            let e = self.totals.entry(name).or_insert((0.0, 0));
            e.0 += ms;
            e.1 += 1;
        }
    }
    /// The table of kernels by total device time (folds what is pending first).
    pub(super) fn report(&mut self) -> String {
        self.fold();
        let all: f64 = self.totals.values().map(|v| v.0).sum();
        let mut rows: Vec<_> = self.totals.iter().collect();
        rows.sort_by(|a, b| b.1 .0.total_cmp(&a.1 .0));
        let mut out = format!(
            "CUDA kernel profile (device time, event pairs):\n{:<28} {:>8} {:>11} {:>10} {:>6}\n",
            "kernel", "launches", "total ms", "mean us", "share"
        );
        for (name, (ms, n)) in rows {
            out.push_str(&format!(
                "{name:<28} {n:>8} {ms:>11.3} {:>10.1} {:>5.1}%\n",
                ms * 1e3 / *n as f64,
                100.0 * ms / all.max(1e-12)
            ));
        }
        out
    }

    /// Record one launch timed by the events `start` and `end` (already recorded around it).
    pub(super) fn push(&mut self, name: &str, start: CudaEvent, end: CudaEvent) {
        self.pending.push((name.to_string(), start, end));
        if self.pending.len() >= 4096 {
            self.fold();
        }
    }

    /// Whether anything was recorded.
    pub(super) fn is_empty(&self) -> bool {
        self.pending.is_empty() && self.totals.is_empty()
    }
}
