//! Intra-page parallelism: a big page is cut into horizontal strips where the page is a
//! single column, the strips are recognised on several engines at once, and their texts are
//! joined top to bottom.
//!
//! Where to cut is a small layout analysis of its own, from projection profiles: the page's
//! inked rows group into lines, a cut may only go through the blank rows between two lines,
//! and only where none of the lines on either side is part of a column gutter (blank
//! columns inside the text that several consecutive lines share, as spaces between words
//! never do). Tesseract reads a multi-column page column by column; cutting across
//! columns would interleave them, so such a page is cut only where all columns have ended,
//! or not at all. Cuts are placed so each strip holds about the same amount of ink, since
//! recognition time follows the text, not the height.
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
    engine::{OcrResult, PagePlace},
    image::Pixels,
    options::{OcrOptions, OutputKind, OutputSet},
    pool::TaskError,
};

/// Pages smaller than this are not worth splitting: about an A5 page at 150 dpi.
pub const MIN_PIXELS: u64 = 2_000_000;
/// A pixel is ink when any of its colour channels is darker than this.
const INK: u8 = 160;
/// The fewest blank rows that separate two lines; closer ink rows belong to one line.
const MIN_GAP: usize = 4;
/// Lines on each side of a cut that must be clear of column gutters.
const NEIGHBOURS: usize = 3;
/// Consecutive lines whose shared blank columns make a gutter.
const GUTTER_LINES: usize = 3;

/// Whether a task may be split at all: text and confidence can be joined; words, hOCR and TSV
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

/// Up to `parts` row ranges covering the page, holding about equal ink each, cut only in
/// single-column stretches. Fewer (maybe one) when the page has no safe place to cut.
pub fn plan(pixels: &Pixels, parts: usize) -> Vec<Range<u32>> {
    let lines = lines(pixels);
    let gutter = min_gutter(&lines);
    // A line is in columns when it and its neighbours share a gutter. One line alone may
    // have wide spaces between words, but those do not line up from line to line.
    let stretch = GUTTER_LINES.min(lines.len()).max(1);
    let mut in_columns = vec![false; lines.len()];
    for (first, stretch_lines) in lines.windows(stretch).enumerate() {
        if has_gutter(stretch_lines, gutter) {
            in_columns[first..first + stretch].fill(true);
        }
    }
    // Each safe cut, in the middle of its gap, with the ink above it.
    let mut cuts = Vec::new();
    let mut ink_above = 0;
    for (i, pair) in lines.windows(2).enumerate() {
        ink_above += pair[0].ink;
        let nearby = (i + 1).saturating_sub(NEIGHBOURS)..(i + 1 + NEIGHBOURS).min(lines.len());
        if !in_columns[nearby].contains(&true) {
            let middle = (pair[0].rows.end + pair[1].rows.start) / 2;
            cuts.push((ink_above, middle));
        }
    }
    let total: u64 = lines.iter().map(|line| line.ink).sum();
    let mut chosen: Vec<usize> = (1..parts as u64)
        .filter_map(|k| {
            let target = total * k / parts as u64;
            cuts.iter()
                .min_by_key(|(ink, _)| ink.abs_diff(target))
                .map(|&(_, row)| row)
        })
        .collect();
    chosen.sort_unstable();
    chosen.dedup();
    let bounds: Vec<u32> = std::iter::once(0)
        .chain(chosen)
        .chain(std::iter::once(pixels.height() as usize))
        .map(|y| y as u32)
        .collect();
    bounds.windows(2).map(|pair| pair[0]..pair[1]).collect()
}

/// Inked rows close enough to read as one line of text (or several touching ones).
struct Line {
    rows: Range<usize>,
    /// Ink pixels in the line: the share of recognition work it brings.
    ink: u64,
    /// Which columns hold ink anywhere in the line.
    columns: Vec<bool>,
}

/// The page's lines, top to bottom.
fn lines(pixels: &Pixels) -> Vec<Line> {
    let width = pixels.width() as usize;
    let channels = usize::from(pixels.channels());
    // Alpha, the fourth channel, says nothing about ink.
    let colours = channels.min(3);
    let is_ink = |pixel: &[u8]| pixel[..colours].iter().any(|&value| value < INK);
    let mut lines: Vec<Line> = Vec::new();
    let mut blank_rows = 0;
    for (y, row) in pixels.data().chunks_exact(width * channels).enumerate() {
        if !row.chunks_exact(channels).any(is_ink) {
            blank_rows += 1;
            continue;
        }
        let line = match lines.last_mut() {
            Some(line) if blank_rows < MIN_GAP => line,
            _ => {
                lines.push(Line {
                    rows: y..y,
                    ink: 0,
                    columns: vec![false; width],
                });
                let last = lines.len() - 1;
                &mut lines[last]
            }
        };
        line.rows.end = y + 1;
        for (x, pixel) in row.chunks_exact(channels).enumerate() {
            if is_ink(pixel) {
                line.columns[x] = true;
                line.ink += 1;
            }
        }
        blank_rows = 0;
    }
    lines
}

/// The narrowest blank stretch between inked columns that counts as a gutter between text
/// columns: half the usual line height, wider than the space between words.
fn min_gutter(lines: &[Line]) -> usize {
    let mut heights: Vec<usize> = lines.iter().map(|line| line.rows.len()).collect();
    heights.sort_unstable();
    let median = heights.get(heights.len() / 2).copied().unwrap_or(0);
    (median / 2).max(MIN_GAP)
}

/// Whether `lines` together leave a blank run of at least `gutter` columns between their
/// leftmost and rightmost ink: text set in columns, a table, or a figure beside the text.
fn has_gutter(lines: &[Line], gutter: usize) -> bool {
    let Some(width) = lines.first().map(|line| line.columns.len()) else {
        return false;
    };
    let inked = |x: usize| lines.iter().any(|line| line.columns[x]);
    let Some(first) = (0..width).find(|&x| inked(x)) else {
        return false;
    };
    let mut blank = 0;
    for x in first..width {
        if inked(x) {
            if blank >= gutter {
                return true;
            }
            blank = 0;
        } else {
            blank += 1;
        }
    }
    false
}

/// One page's strips, shared by the engines recognising them.
pub struct Split {
    pub options: std::sync::Arc<OcrOptions>,
    pub outputs: OutputSet,
    /// The page the strips are cut from.
    pub place: PagePlace,
    strips: Vec<Mutex<Option<Pixels>>>,
    next: AtomicUsize,
    results: Mutex<Vec<Option<Result<OcrResult, TaskError>>>>,
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
        place: PagePlace,
        deadline: Option<Instant>,
    ) -> Split {
        let count = strips.len();
        Split {
            options,
            outputs,
            place,
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

    pub fn finish(&self, index: usize, result: Result<OcrResult, TaskError>) {
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
    pub fn join(&self, cancel: &dyn Fn() -> bool) -> Result<OcrResult, TaskError> {
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
        let mut weighted = 0.0f32;
        for result in results.iter_mut().filter_map(Option::take) {
            let result = result?;
            if let Some(confidence) = result.confidence {
                weighted += confidence * result.word_count as f32;
                joined.word_count += result.word_count;
            }
            let text = result.text.unwrap_or_default();
            joined.text.get_or_insert_with(String::new).push_str(&text);
        }
        if self.outputs.contains(OutputKind::Confidence) {
            joined.confidence = Some(weighted / joined.word_count.max(1) as f32);
        }
        if !self.outputs.contains(OutputKind::Text) {
            joined.text = None;
        }
        Ok(joined)
    }
}

#[cfg(test)]
mod tests {
    use image::{DynamicImage, GrayImage, Luma};

    use super::*;

    const LINE: u32 = 30;
    const PITCH: u32 = 50;

    /// A white page with a line of "words" (dark runs 60 px long, 12 px apart, shifted line by
    /// line) at each of `lines`: (first row, left column, right column).
    fn page(lines: &[(u32, u32, u32)]) -> Pixels {
        let mut page = GrayImage::from_pixel(2000, 1600, Luma([255]));
        for (n, &(top, left, right)) in lines.iter().enumerate() {
            for y in top..top + LINE {
                for x in left..right {
                    let in_word = (x - left + 17 * n as u32) % 72 < 60;
                    if in_word {
                        page.put_pixel(x, y, Luma([0]));
                    }
                }
            }
        }
        Pixels::from_dynamic(DynamicImage::ImageLuma8(page))
    }

    fn rows(from: u32, count: u32) -> impl Iterator<Item = u32> {
        (0..count).map(move |i| from + i * PITCH)
    }

    #[test]
    fn a_single_column_is_cut_between_lines_into_strips_of_equal_ink() {
        let tops: Vec<u32> = rows(100, 24).collect();
        let lines: Vec<_> = tops.iter().map(|&top| (top, 100, 1900)).collect();
        let strips = plan(&page(&lines), 3);
        assert_eq!(strips.len(), 3, "{strips:?}");
        for strip in &strips {
            let inside = tops.iter().filter(|&&top| strip.contains(&top)).count();
            assert_eq!(inside, 8, "{strips:?}");
        }
        for cut in strips.iter().skip(1).map(|strip| strip.start) {
            assert!(
                tops.iter().all(|&top| !(top..top + LINE).contains(&cut)),
                "cut {cut} goes through a line"
            );
        }
    }

    #[test]
    fn two_columns_side_by_side_are_never_cut() {
        let lines: Vec<_> = rows(100, 24)
            .flat_map(|top| [(top, 100, 950), (top, 1000, 1900)])
            .collect();
        assert_eq!(plan(&page(&lines), 2), vec![0..1600]);
    }

    #[test]
    fn a_page_is_cut_only_where_its_columns_have_ended() {
        // A full-width heading, two columns, then full-width text again.
        let heading = rows(100, 2).map(|top| (top, 100, 1900));
        let columns = rows(200, 12).flat_map(|top| [(top, 100, 950), (top, 1000, 1900)]);
        let closing = rows(800, 12).map(|top| (top, 100, 1900));
        let lines: Vec<_> = heading.chain(columns).chain(closing).collect();
        let strips = plan(&page(&lines), 2);
        assert_eq!(strips.len(), 2, "{strips:?}");
        // At least NEIGHBOURS full-width lines between the columns and the cut.
        let columns_end = 200 + 11 * PITCH + LINE;
        assert!(strips[1].start >= columns_end + 2 * PITCH, "{strips:?}");
    }

    #[test]
    fn a_blank_page_is_one_strip() {
        assert_eq!(plan(&page(&[]), 4), vec![0..1600]);
    }
}
