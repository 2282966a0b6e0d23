//! One Tesseract engine: a `TessBaseAPI` initialised for one language specification, owned by
//! exactly one worker thread for its whole life.

use std::{
    os::raw::{c_int, c_void},
    path::Path,
    time::{Duration, Instant},
};

use serde::Serialize;
use tesseract_rs::{TessPageSegMode, TesseractAPI};

use super::{image::Pixels, Lang, OcrOptions, OutputKind, OutputSet};

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
    /// The caller's cancellation check asked to stop (deadline passed or caller gone).
    #[error("recognition cancelled")]
    Cancelled,
}

/// One recognised word. Coordinates are pixels of the input image; `conf` is in 0..=1.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Word {
    pub text: String,
    pub conf: f32,
    pub x1: i32,
    pub y1: i32,
    pub x2: i32,
    pub y2: i32,
}

/// What one recognition produced. Only the requested outputs are `Some`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct OcrResult {
    pub text: Option<String>,
    pub confidence: Option<f32>,
    pub words: Option<Vec<Word>>,
    pub hocr: Option<String>,
    pub tsv: Option<String>,
    pub timings: Timings,
    /// Width × height of the decoded image.
    pub pixels: u64,
    /// Served from the result cache: no engine ran, the timings are zero.
    pub cached: bool,
}

/// Where the time of one image went.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Timings {
    /// Waiting in the pool's queue for a free engine.
    pub queue: Duration,
    /// Decoding the file into pixels.
    pub decode: Duration,
    /// Inside Tesseract: recognition and rendering the outputs.
    pub recognize: Duration,
}

pub struct Engine {
    api: TesseractAPI,
    lang: Lang,
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
        options: &OcrOptions,
        outputs: OutputSet,
        cancel: &dyn Fn() -> bool,
    ) -> Result<OcrResult, EngineError> {
        let started = Instant::now();
        let result = self.run(pixels, options, outputs, cancel);
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
        options: &OcrOptions,
        outputs: OutputSet,
        cancel: &dyn Fn() -> bool,
    ) -> Result<OcrResult, EngineError> {
        self.configure(options)?;
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
        if let Some(dpi) = options.dpi {
            self.api
                .set_source_resolution(dpi as i32)
                .map_err(|_| EngineError::Tesseract("set the resolution"))?;
        }
        self.recognize_with_cancel(cancel)?;

        let fail = EngineError::Tesseract;
        let mut result = OcrResult::default();
        if outputs.contains(OutputKind::Text) {
            result.text = Some(self.api.get_utf8_text().map_err(|_| fail("get text"))?);
        }
        if outputs.contains(OutputKind::Confidence) {
            let mean = self.api.mean_text_conf().map_err(|_| fail("score"))?;
            result.confidence = Some(mean.clamp(0, 100) as f32 / 100.0);
        }
        if outputs.contains(OutputKind::Words) {
            result.words = Some(self.words()?);
        }
        if outputs.contains(OutputKind::Hocr) {
            result.hocr = Some(self.api.get_hocr_text(0).map_err(|_| fail("render hOCR"))?);
        }
        if outputs.contains(OutputKind::Tsv) {
            result.tsv = Some(self.api.get_tsv_text(0).map_err(|_| fail("render TSV"))?);
        }
        Ok(result)
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

    fn words(&self) -> Result<Vec<Word>, EngineError> {
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
                });
            }
            if !iter.next_word().unwrap_or(false) {
                return Ok(words);
            }
        }
    }
}
