//! One Tesseract engine: a `TessBaseAPI` initialised for one language specification, owned by
//! exactly one worker thread for its whole life.

use std::{
    os::raw::{c_int, c_void},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use bytes::Bytes;
use serde::Serialize;
use tesseract_rs::{TessPageSegMode, TessResultRenderer, TesseractAPI};

use super::{image::Pixels, orientation::Orientation, Lang, OcrOptions, OutputKind, OutputSet};

// The C API's progress monitor, which tesseract-rs does not expose with a cancel callback.
// Linked through tesseract-rs, which links libtesseract.
extern "C" {
    fn TessMonitorCreate() -> *mut c_void;
    fn TessMonitorDelete(monitor: *mut c_void);
    fn TessMonitorSetCancelFunc(monitor: *mut c_void, cancel: CancelFunc);
    fn TessMonitorSetCancelThis(monitor: *mut c_void, cancel_this: *mut c_void);
    fn TessBaseAPIRecognize(handle: *mut c_void, monitor: *mut c_void) -> c_int;
}

type CancelFunc = Option<unsafe extern "C" fn(cancel_this: *mut c_void, words: c_int) -> bool>;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("could not initialise Tesseract for '{lang}' from {tessdata}")]
    Init { lang: String, tessdata: String },
    #[error("Tesseract failed to {0}")]
    Tesseract(&'static str),
    #[error("the searchable PDF could not be made: {0}")]
    Pdf(String),
    /// The caller's cancellation check asked to stop (deadline passed or caller gone).
    #[error("recognition cancelled")]
    Cancelled,
}

/// One recognised word. Coordinates are pixels of its page's image; `conf` is in 0..=1; `page`
/// is 1-based (always 1 for a single image).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Word {
    pub text: String,
    pub conf: f32,
    pub x1: i32,
    pub y1: i32,
    pub x2: i32,
    pub y2: i32,
    pub page: u32,
}

/// What the recognition of one element (an image, or a document's pages) produced. Only the
/// requested outputs are `Some`. For one page, `hocr`, `tsv` and `alto` hold that page's part
/// of the document; [`super::output`] assembles the whole.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct OcrResult {
    pub text: Option<String>,
    pub confidence: Option<f32>,
    pub words: Option<Vec<Word>>,
    pub hocr: Option<String>,
    pub tsv: Option<String>,
    pub alto: Option<String>,
    pub pdf: Option<Bytes>,
    /// One entry per page read, in order.
    pub pages: Vec<PageReport>,
    /// Words the confidence is the mean of: the weight of this result in a document's mean.
    pub word_count: usize,
    pub timings: Timings,
    /// Width × height of the decoded image (summed over pages).
    pub pixels: u64,
    /// Served from the result cache: no engine ran, the timings are zero.
    pub cached: bool,
}

/// One page as the `pages` output describes it.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct PageReport {
    /// 0-based position in the document.
    pub index: u32,
    /// 1-based page number, as `pages` selects it and words name it.
    pub page: u32,
    pub width: u32,
    pub height: u32,
    /// The resolution Tesseract was told, if any.
    pub dpi: Option<u32>,
    /// Filled in when the document is assembled, if `text` / `confidence` are wanted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub confidence: Option<f32>,
    /// Present when `rotate=auto` asked for detection.
    pub orientation: Option<Orientation>,
    pub timings: PageTimings,
}

/// A page's timings in milliseconds, for JSON.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct PageTimings {
    pub queue_ms: f64,
    pub render_ms: f64,
    pub recognize_ms: f64,
}

impl From<Timings> for PageTimings {
    fn from(t: Timings) -> PageTimings {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        PageTimings {
            queue_ms: ms(t.queue),
            render_ms: ms(t.decode),
            recognize_ms: ms(t.recognize),
        }
    }
}

/// Where the time of one image went.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Timings {
    /// Waiting in the pool's queue for a free engine.
    pub queue: Duration,
    /// Decoding the file, or rendering the page, into pixels.
    pub decode: Duration,
    /// Inside Tesseract: orientation, recognition and rendering the outputs.
    pub recognize: Duration,
}

impl std::ops::AddAssign for Timings {
    fn add_assign(&mut self, other: Timings) {
        self.queue += other.queue;
        self.decode += other.decode;
        self.recognize += other.recognize;
    }
}

/// The page an engine is reading, as Tesseract's outputs number it.
#[derive(Clone, Copy, Debug, Default)]
pub struct PagePlace {
    /// 0-based.
    pub index: u32,
    /// The page's real resolution, when known (a rendered PDF page, a TIFF that declares it,
    /// or the request's `dpi`).
    pub dpi: Option<u32>,
}

pub struct Engine {
    api: TesseractAPI,
    lang: Lang,
    /// Where `pdf.ttf`, the searchable PDF's glyph-less font, is found.
    tessdata: PathBuf,
}

impl Engine {
    pub fn new(tessdata: &Path, lang: &Lang) -> Result<Engine, EngineError> {
        let api = TesseractAPI::new();
        let init_error = || EngineError::Init {
            lang: lang.as_str().to_owned(),
            tessdata: tessdata.display().to_string(),
        };
        api.init(tessdata, lang.as_str())
            .map_err(|_| init_error())?;
        // Tesseract's diagnostics ("Estimating resolution as ...") would otherwise go to stderr
        // once per image.
        api.set_variable("debug_file", "/dev/null")
            .map_err(|_| init_error())?;
        Ok(Engine {
            api,
            lang: lang.clone(),
            tessdata: tessdata.to_owned(),
        })
    }

    pub fn lang(&self) -> &Lang {
        &self.lang
    }

    /// Recognises `pixels` and computes the requested outputs. `cancel` is polled by Tesseract
    /// between words; returning `true` stops recognition with [`EngineError::Cancelled`].
    pub fn recognize(
        &mut self,
        pixels: &Pixels,
        place: PagePlace,
        options: &OcrOptions,
        outputs: OutputSet,
        cancel: &dyn Fn() -> bool,
    ) -> Result<OcrResult, EngineError> {
        let started = Instant::now();
        let result = self.run(pixels, place, options, outputs, cancel);
        // Free the page and its results now rather than when the next image arrives.
        let _ = self.api.clear();
        result.map(|mut result| {
            result.timings.recognize = started.elapsed();
            result
        })
    }

    fn run(
        &mut self,
        pixels: &Pixels,
        place: PagePlace,
        options: &OcrOptions,
        outputs: OutputSet,
        cancel: &dyn Fn() -> bool,
    ) -> Result<OcrResult, EngineError> {
        self.configure(options)?;
        self.set_image(pixels, place.dpi)?;
        self.recognize_with_cancel(cancel)?;

        let fail = EngineError::Tesseract;
        // Tesseract numbers pages from 0 in its outputs' ids and page numbers.
        let page = i32::try_from(place.index).unwrap_or(i32::MAX);
        let mut result = OcrResult::default();
        if outputs.contains(OutputKind::Text) {
            result.text = Some(self.api.get_utf8_text().map_err(|_| fail("get text"))?);
        }
        if outputs.contains(OutputKind::Confidence) {
            // The mean Tesseract's MeanTextConf gives, with the count that weighs it in a
            // document's mean.
            let confs = self.api.all_word_confidences().map_err(|_| fail("score"))?;
            let sum: i64 = confs.iter().map(|&c| i64::from(c.clamp(0, 100))).sum();
            result.word_count = confs.len();
            result.confidence = Some(sum as f32 / 100.0 / confs.len().max(1) as f32);
        }
        if outputs.contains(OutputKind::Words) {
            result.words = Some(self.words(place.index.saturating_add(1))?);
        }
        if outputs.contains(OutputKind::Hocr) {
            result.hocr = Some(
                self.api
                    .get_hocr_text(page)
                    .map_err(|_| fail("render hOCR"))?,
            );
        }
        if outputs.contains(OutputKind::Tsv) {
            result.tsv = Some(
                self.api
                    .get_tsv_text(page)
                    .map_err(|_| fail("render TSV"))?,
            );
        }
        if outputs.contains(OutputKind::Alto) {
            result.alto = Some(
                self.api
                    .get_alto_text(page)
                    .map_err(|_| fail("render ALTO"))?,
            );
        }
        if outputs.contains(OutputKind::Pdf) {
            result.pdf = Some(self.searchable_pdf()?);
        }
        Ok(result)
    }

    fn set_image(&mut self, pixels: &Pixels, dpi: Option<u32>) -> Result<(), EngineError> {
        // Tesseract takes dimensions and the row stride as C ints.
        let too_large = || EngineError::Tesseract("take an image this large");
        let channels = i32::from(pixels.channels());
        let width = i32::try_from(pixels.width()).map_err(|_| too_large())?;
        let height = i32::try_from(pixels.height()).map_err(|_| too_large())?;
        let stride = width.checked_mul(channels).ok_or_else(too_large)?;
        height.checked_mul(stride).ok_or_else(too_large)?;
        self.api
            .set_image(pixels.data(), width, height, channels, stride)
            .map_err(|_| EngineError::Tesseract("set the image"))?;
        if let Some(dpi) = dpi {
            self.api
                .set_source_resolution(i32::try_from(dpi).unwrap_or(i32::MAX))
                .map_err(|_| EngineError::Tesseract("set the resolution"))?;
        }
        Ok(())
    }

    /// Tesseract's orientation detection on `pixels`. Only an engine initialised with `osd`
    /// alone answers it truthfully (one with `eng` or `eng+osd` returns a constant 270°).
    /// `None` when the page has too little text to decide.
    pub fn detect_orientation(
        &mut self,
        pixels: &Pixels,
        dpi: Option<u32>,
    ) -> Result<Option<(u16, f32)>, EngineError> {
        self.set_image(pixels, dpi)?;
        let detected = self.api.detect_os();
        let _ = self.api.clear();
        Ok(detected.ok().and_then(|(degrees, confidence, _, _)| {
            let degrees = u16::try_from(degrees.rem_euclid(360)).ok()?;
            Some((degrees, confidence))
        }))
    }

    /// The recognised page as a one-page searchable PDF, by Tesseract's own renderer. It
    /// writes only to files, so it gets a private directory that is removed on return.
    fn searchable_pdf(&self) -> Result<Bytes, EngineError> {
        let fail = |what: &str| EngineError::Pdf(what.to_owned());
        let dir = tempfile::Builder::new()
            .prefix("tesserve-pdf-")
            .tempdir()
            .map_err(|e| fail(&format!("no temporary directory: {e}")))?;
        let base = dir.path().join("page");
        let (Some(base_str), Some(datadir)) = (base.to_str(), self.tessdata.to_str()) else {
            return Err(fail("a path is not UTF-8"));
        };
        if !self.tessdata.join("pdf.ttf").is_file() {
            return Err(fail(&format!(
                "pdf.ttf is missing from {} (Debian ships it in libtesseract5)",
                self.tessdata.display()
            )));
        }
        let renderer = TessResultRenderer::new_pdf_renderer(base_str, datadir, false)
            .map_err(|_| fail("the renderer did not start"))?;
        let rendered = renderer.begin_document("tesserve").unwrap_or(false)
            && renderer.add_image(&self.api).unwrap_or(false)
            && renderer.end_document().unwrap_or(false);
        drop(renderer);
        if !rendered {
            return Err(fail("Tesseract's renderer failed"));
        }
        std::fs::read(base.with_extension("pdf"))
            .map(Bytes::from)
            .map_err(|e| fail(&format!("reading the rendered file: {e}")))
    }

    /// Sets every request-controllable variable on every call, so no setting of an earlier
    /// request survives into the next one on this engine.
    fn configure(&mut self, options: &OcrOptions) -> Result<(), EngineError> {
        let psm = TessPageSegMode::from_int(i32::from(options.psm.get()));
        self.api
            .set_page_seg_mode(psm)
            .map_err(|_| EngineError::Tesseract("set the page segmentation mode"))?;
        let interword = if options.preserve_interword_spaces {
            "1"
        } else {
            "0"
        };
        for (name, value) in [
            ("tessedit_char_whitelist", options.char_whitelist.as_str()),
            ("preserve_interword_spaces", interword),
        ] {
            self.api
                .set_variable(name, value)
                .map_err(|_| EngineError::Tesseract("set a variable"))?;
        }
        Ok(())
    }

    fn recognize_with_cancel(&mut self, cancel: &dyn Fn() -> bool) -> Result<(), EngineError> {
        unsafe extern "C" fn trampoline(cancel_this: *mut c_void, _words: c_int) -> bool {
            // SAFETY: `cancel_this` points at the `&dyn Fn` below, alive for the whole call.
            let cancel = unsafe { &*(cancel_this as *const &dyn Fn() -> bool) };
            // A panic must not unwind into C++; treat it as a request to stop.
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(cancel)).unwrap_or(true)
        }

        let handle = self
            .api
            .handle
            .lock()
            .map_err(|_| EngineError::Tesseract("lock the engine"))?;
        let mut cancel_ref: &dyn Fn() -> bool = cancel;
        // SAFETY: the monitor lives only within this block, the engine handle is valid (held
        // under its lock) and `cancel_ref` outlives the recognition that reads it.
        let status = unsafe {
            let monitor = TessMonitorCreate();
            TessMonitorSetCancelFunc(monitor, Some(trampoline));
            TessMonitorSetCancelThis(
                monitor,
                &mut cancel_ref as *mut &dyn Fn() -> bool as *mut c_void,
            );
            let status = TessBaseAPIRecognize(*handle, monitor);
            TessMonitorDelete(monitor);
            status
        };
        if status == 0 {
            Ok(())
        } else if cancel() {
            Err(EngineError::Cancelled)
        } else {
            Err(EngineError::Tesseract("recognise the image"))
        }
    }

    fn words(&self, page: u32) -> Result<Vec<Word>, EngineError> {
        let mut words = Vec::new();
        // No iterator means no text on the page.
        let Ok(iter) = self.api.get_iterator() else {
            return Ok(words);
        };
        loop {
            // Positions without a word (an empty page's first element) have no text.
            if let Ok((text, x1, y1, x2, y2, conf)) = iter.get_word_with_bounds() {
                words.push(Word {
                    text,
                    conf: conf.clamp(0.0, 100.0) / 100.0,
                    x1,
                    y1,
                    x2,
                    y2,
                    page,
                });
            }
            if !iter.next_word().unwrap_or(false) {
                return Ok(words);
            }
        }
    }
}
