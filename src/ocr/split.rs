//! Intra-page parallelism: a big page is cut into horizontal strips along blank rows, the
//! strips are recognised on several engines at once, and their texts are joined top to
//! bottom. Cutting only where a whole pixel row is blank never cuts through a line of text,
//! so each strip reads as its part of the page would have.
//!
//! The engine that decoded the page shares its strips with idle engines through [`Split`]:
//! helpers take strips while any are left, and the owner takes them too, so a strip never
//! waits for an engine that is busy elsewhere and the pool cannot deadlock.

use std::{
    ops::Range,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Condvar, Mutex, PoisonError,
    },
    time::{Duration, Instant},
};

use super::{
    engine::OcrResult,
    image::Pixels,
    options::{OcrOptions, OutputKind, OutputSet},
    pool::JobError,
};

/// Pages smaller than this are not worth splitting: about an A5 page at 150 dpi.
pub const MIN_PIXELS: u64 = 2_000_000;
/// A row counts as blank when every pixel is at least this light.
const BLANK: u8 = 160;
/// The fewest blank rows in a row that a cut may go through.
const MIN_GAP: usize = 4;

/// Whether a job may be split at all: text and confidence can be joined; words, hOCR and TSV
/// carry page coordinates and layout that strips would change. Only the page segmentation
/// modes that read a page as blocks top to bottom qualify.
pub fn allowed(options: &OcrOptions, outputs: OutputSet, pixels: &Pixels) -> bool {
    let joinable = OutputKind::ALL
        .iter()
        .filter(|kind| outputs.contains(**kind))
        .all(|kind| matches!(kind, OutputKind::Text | OutputKind::Confidence));
    joinable
        && matches!(options.psm.get(), 1 | 3 | 4 | 6)
        && u64::from(pixels.width()) * u64::from(pixels.height()) >= MIN_PIXELS
}

/// Up to `parts` row ranges covering the page, cut in the middle of blank gaps nearest to
/// equal heights. Fewer (maybe one) when the page has no suitable gaps.
pub fn plan(pixels: &Pixels, parts: usize) -> Vec<Range<u32>> {
    let height = pixels.height() as usize;
    let row_bytes = pixels.width() as usize * usize::from(pixels.channels());
    let blank: Vec<bool> = pixels
        .data()
        .chunks_exact(row_bytes)
        .map(|row| row.iter().all(|&value| value >= BLANK))
        .collect();
    // The middles of blank runs, away from the page's edges.
    let mut gaps = Vec::new();
    let mut run = 0;
    for (y, &is_blank) in blank.iter().enumerate() {
        if is_blank {
            run += 1;
            continue;
        }
        if run >= MIN_GAP && y > run {
            gaps.push(y - run / 2);
        }
        run = 0;
    }
    let mut cuts: Vec<usize> = (1..parts)
        .filter_map(|i| {
            let target = height * i / parts;
            gaps.iter().copied().min_by_key(|gap| gap.abs_diff(target))
        })
        .collect();
    cuts.sort_unstable();
    cuts.dedup();
    let bounds: Vec<u32> = std::iter::once(0)
        .chain(cuts)
        .chain(std::iter::once(height))
        .map(|y| y as u32)
        .collect();
    bounds.windows(2).map(|pair| pair[0]..pair[1]).collect()
}

/// One page's strips, shared by the engines recognising them.
pub struct Split {
    pub options: std::sync::Arc<OcrOptions>,
    pub outputs: OutputSet,
    strips: Vec<Mutex<Option<Pixels>>>,
    next: AtomicUsize,
    results: Mutex<Vec<Option<Result<OcrResult, JobError>>>>,
    finished: Condvar,
    /// Set by the owner when the caller left or the deadline passed.
    cancelled: AtomicBool,
    deadline: Option<Instant>,
}

impl Split {
    pub fn new(
        strips: Vec<Pixels>,
        options: std::sync::Arc<OcrOptions>,
        outputs: OutputSet,
        deadline: Option<Instant>,
    ) -> Split {
        let count = strips.len();
        Split {
            options,
            outputs,
            strips: strips.into_iter().map(|s| Mutex::new(Some(s))).collect(),
            next: AtomicUsize::new(0),
            results: Mutex::new((0..count).map(|_| None).collect()),
            finished: Condvar::new(),
            cancelled: AtomicBool::new(false),
            deadline,
        }
    }

    pub fn len(&self) -> usize {
        self.strips.len()
    }

    /// The next strip nobody has taken, with its index.
    pub fn take(&self) -> Option<(usize, Pixels)> {
        let index = self.next.fetch_add(1, Ordering::AcqRel);
        let strip = self.strips.get(index)?;
        let pixels = strip
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()?;
        Some((index, pixels))
    }

    pub fn finish(&self, index: usize, result: Result<OcrResult, JobError>) {
        let mut results = self.results.lock().unwrap_or_else(PoisonError::into_inner);
        results[index] = Some(result);
        self.finished.notify_all();
    }

    /// Whether a helper should stop recognising.
    pub fn cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Acquire) || self.deadline.is_some_and(|d| Instant::now() >= d)
    }

    /// Waits for every strip, checking `cancel` now and then; the joined result, or the first
    /// strip's error.
    pub fn join(&self, cancel: &dyn Fn() -> bool) -> Result<OcrResult, JobError> {
        let mut results = self.results.lock().unwrap_or_else(PoisonError::into_inner);
        while results.iter().any(Option::is_none) {
            if cancel() {
                self.cancelled.store(true, Ordering::Release);
            }
            results = self
                .finished
                .wait_timeout(results, Duration::from_millis(10))
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        let mut joined = OcrResult::default();
        let (mut weighted, mut weight) = (0.0f32, 0usize);
        for result in results.iter_mut().filter_map(Option::take) {
            let result = result?;
            let text = result.text.unwrap_or_default();
            if let Some(confidence) = result.confidence {
                let chars = text.chars().filter(|c| !c.is_whitespace()).count().max(1);
                weighted += confidence * chars as f32;
                weight += chars;
            }
            joined.text.get_or_insert_with(String::new).push_str(&text);
        }
        if self.outputs.contains(OutputKind::Confidence) {
            joined.confidence = Some(weighted / weight.max(1) as f32);
        }
        if !self.outputs.contains(OutputKind::Text) {
            joined.text = None;
        }
        Ok(joined)
    }
}
