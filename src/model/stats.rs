//! Per-model inference statistics in the shape of Triton's `ModelStatistics`, kept with
//! relaxed atomics so recording never contends on the request path.

use std::{
    sync::atomic::{AtomicU64, Ordering::Relaxed},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use crate::ocr::Timings;

/// A count of events and their summed duration.
#[derive(Default)]
struct DurationStat {
    count: AtomicU64,
    ns: AtomicU64,
}

impl DurationStat {
    fn record(&self, duration: Duration) {
        self.count.fetch_add(1, Relaxed);
        self.ns.fetch_add(duration.as_nanos() as u64, Relaxed);
    }

    fn snapshot(&self) -> DurationTotal {
        DurationTotal {
            count: self.count.load(Relaxed),
            ns: self.ns.load(Relaxed),
        }
    }
}

/// A read-out of one [`DurationStat`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DurationTotal {
    pub count: u64,
    pub ns: u64,
}

#[derive(Default)]
pub struct Stats {
    last_inference_ms: AtomicU64,
    /// Images recognised successfully.
    inference_count: AtomicU64,
    /// Requests that ran (a batch of N images is one execution).
    execution_count: AtomicU64,
    success: DurationStat,
    fail: DurationStat,
    queue: DurationStat,
    decode: DurationStat,
    recognize: DurationStat,
}

/// A consistent-enough copy of [`Stats`] for reporting.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub last_inference_ms: u64,
    pub inference_count: u64,
    pub execution_count: u64,
    /// Whole requests, end to end.
    pub success: DurationTotal,
    pub fail: DurationTotal,
    /// Per image: waiting for an engine.
    pub queue: DurationTotal,
    /// Per image: decoding the file.
    pub compute_input: DurationTotal,
    /// Per image: Tesseract.
    pub compute_infer: DurationTotal,
}

impl Stats {
    pub fn record_success(&self, images: &[Timings], total: Duration) {
        self.success.record(total);
        self.execution_count.fetch_add(1, Relaxed);
        self.inference_count.fetch_add(images.len() as u64, Relaxed);
        for timings in images {
            self.queue.record(timings.queue);
            self.decode.record(timings.decode);
            self.recognize.record(timings.recognize);
        }
        self.touch();
    }

    pub fn record_failure(&self, total: Duration) {
        self.fail.record(total);
        self.touch();
    }

    fn touch(&self) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        self.last_inference_ms.store(now, Relaxed);
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            last_inference_ms: self.last_inference_ms.load(Relaxed),
            inference_count: self.inference_count.load(Relaxed),
            execution_count: self.execution_count.load(Relaxed),
            success: self.success.snapshot(),
            fail: self.fail.snapshot(),
            queue: self.queue.snapshot(),
            compute_input: self.decode.snapshot(),
            compute_infer: self.recognize.snapshot(),
        }
    }
}
