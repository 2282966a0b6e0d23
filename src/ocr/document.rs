//! Documents: PDFs and multi-page TIFFs, opened under limits and rendered one page at a time.
//!
//! The stage is split on purpose. [`Document::open`] parses only the structure (page count, page
//! boxes, TIFF directories), so a hostile file is refused in milliseconds with the limit it broke,
//! before any pixels exist. [`Document::check`] then refuses a page selection whose pages would be
//! too big at the requested resolution, from the page box alone. Only [`Document::render`] makes
//! pixels, one page per call, so a caller that recognises pages as it renders them never holds
//! more pages than it has engines for, whatever the document's length.
//!
//! Everything here is blocking and CPU-bound: callers run it off the async runtime.

use std::{
    fmt,
    io::Cursor,
    num::NonZeroU32,
    panic::{catch_unwind, AssertUnwindSafe},
    sync::atomic::{AtomicBool, Ordering},
};

use bytes::Bytes;
use hayro::{
    hayro_interpret::{util::TransformExt, InterpreterSettings},
    hayro_syntax::{DecryptionError, LoadPdfError, Pdf},
    kurbo::Affine,
    vello_cpu::{
        color::palette::css::WHITE, Pixmap, RasterizerSettings, RenderContext, Resources,
        TargetInit,
    },
    RenderCache, RenderSettings,
};
use tiff::{
    decoder::{Decoder, DecodingResult, Limits},
    tags::{ResolutionUnit, Tag},
    ColorType,
};

use super::image::{ImageLimits, Pixels};

mod page_tree;
mod scan;

/// How far into a file `%PDF-` may start. Real files carry a few bytes of junk (a BOM, a mail
/// header) before it, and readers accept the header within the first kilobyte.
const PDF_HEADER_WINDOW: usize = 1024;

/// PDF user space has 72 units to the inch.
const POINTS_PER_INCH: f64 = 72.0;

/// The highest resolution a page may be rendered at; beyond it nothing gains but the pixel count.
pub const MAX_DPI: u32 = 1200;

/// hayro's render target takes its dimensions as `u16`.
const MAX_RENDER_SIDE: u64 = u16::MAX as u64;

/// What the first bytes of an input say it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Pdf,
    Tiff,
    /// Anything else: left to the single-image path, which names the format or refuses it.
    Image,
}

/// Tells documents from single images by their first bytes only: a file name or a client's
/// content type is a claim, the bytes are the fact.
pub fn sniff(bytes: &[u8]) -> Kind {
    let window = &bytes[..bytes.len().min(PDF_HEADER_WINDOW)];
    if window.windows(5).any(|w| w == b"%PDF-") {
        return Kind::Pdf;
    }
    match bytes.get(..4) {
        // Classic TIFF (42) and BigTIFF (43), in either byte order.
        Some(b"II*\0" | b"MM\0*" | b"II+\0" | b"MM\0+") => Kind::Tiff,
        _ => Kind::Image,
    }
}

/// The limits a document must meet before any page is rendered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DocumentLimits {
    /// Largest file accepted, in bytes: the single-image byte limit, so one element of a request
    /// is bounded the same way whatever it holds.
    pub max_bytes: usize,
    /// Most pages a document may have.
    pub max_pages: usize,
    /// Largest width × height of one page as rendered (or decoded, for TIFF).
    pub max_page_pixels: u64,
}

impl DocumentLimits {
    pub fn new(image: &ImageLimits, max_pages: usize, max_page_pixels: u64) -> DocumentLimits {
        DocumentLimits {
            max_bytes: image.max_bytes,
            max_pages,
            max_page_pixels,
        }
    }
}

/// A render resolution in dots per inch, within 1..=[`MAX_DPI`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Dpi(NonZeroU32);

impl Dpi {
    /// What PDF pages are rendered at unless a request says otherwise: what OCR engines are
    /// trained for, and what scanners produce.
    pub const DEFAULT: Dpi = Dpi(NonZeroU32::new(300).unwrap());

    pub fn new(dpi: u32) -> Result<Dpi, DocumentError> {
        match NonZeroU32::new(dpi) {
            Some(dpi) if dpi.get() <= MAX_DPI => Ok(Dpi(dpi)),
            _ => Err(DocumentError::Dpi { dpi }),
        }
    }

    pub fn get(self) -> u32 {
        self.0.get()
    }
}

impl fmt::Display for Dpi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} dpi", self.0)
    }
}

/// A page of one document, 0-based. Only [`Document::page_indexes`] and [`parse_pages`] make
/// them, so an index is in range for the document it came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PageIndex(u32);

impl PageIndex {
    /// 0-based, for indexing.
    pub fn get(self) -> usize {
        self.0 as usize
    }

    /// 1-based, as users count pages and as every message names them.
    pub fn number(self) -> u64 {
        u64::from(self.0) + 1
    }
}

impl fmt::Display for PageIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "page {}", self.number())
    }
}

/// A page's size as the file states it, before rendering.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum PageSize {
    /// A PDF page: its visible box in points (1/72 inch), already turned by `/Rotate`, so width
    /// is what will be the rendered image's width.
    Points { width: f64, height: f64 },
    /// A TIFF page: stored pixels, and the resolution its tags declare, if any.
    Pixels {
        width: u32,
        height: u32,
        dpi: Option<Dpi>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PageInfo {
    pub index: PageIndex,
    pub size: PageSize,
}

impl PageInfo {
    /// The pixel size this page will have, and the resolution it will carry, when rendered at
    /// `dpi`. A TIFF page is never resampled: it keeps its own pixels and declared resolution.
    ///
    /// PDF sizes are rounded to the nearest pixel, not truncated as `hayro::render` does (which
    /// makes a Letter page 2550x3299 at 300 dpi, because 792 × 300/72 is 3299.9999 in `f32`).
    pub fn pixels_at(&self, dpi: Dpi) -> (u64, u64, Option<Dpi>) {
        match self.size {
            PageSize::Points { width, height } => {
                let scale = f64::from(dpi.get()) / POINTS_PER_INCH;
                (
                    to_pixels(width * scale),
                    to_pixels(height * scale),
                    Some(dpi),
                )
            }
            PageSize::Pixels { width, height, dpi } => (u64::from(width), u64::from(height), dpi),
        }
    }
}

/// Rounds a positive length to whole pixels, at least one; non-finite lengths saturate so that
/// the limit check refuses them.
fn to_pixels(length: f64) -> u64 {
    if length.is_finite() {
        // `as` saturates for floats out of range.
        (length.round() as u64).max(1)
    } else {
        u64::MAX
    }
}

/// One rendered page, ready for an engine.
#[derive(Debug)]
pub struct RenderedPage {
    pub index: PageIndex,
    pub pixels: Pixels,
    /// The page's real resolution, for Tesseract's `SetSourceResolution`: the render dpi for a
    /// PDF, the declared one for a TIFF (`None` when its tags do not say).
    pub dpi: Option<Dpi>,
}

#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum DocumentError {
    #[error("document is empty")]
    Empty,
    #[error("document is {size} bytes, over the limit of {limit} bytes")]
    TooManyBytes { size: usize, limit: usize },
    #[error("not a PDF or TIFF document")]
    NotADocument,
    #[error("encrypted PDF: a password is needed")]
    PasswordNeeded,
    #[error("encrypted PDF: {0}")]
    Encryption(&'static str),
    #[error("not a readable PDF: {0}")]
    UnreadablePdf(String),
    #[error("not a readable TIFF: {0}")]
    UnreadableTiff(String),
    #[error("document has no pages")]
    NoPages,
    #[error(
        "document has {pages}{} pages, over the limit of {limit}",
        if *.exact { "" } else { " or more" }
    )]
    TooManyPages {
        pages: usize,
        limit: usize,
        /// False when counting stopped at the limit (a TIFF's directories are not walked past
        /// it, so a chain of millions costs no more than `limit + 1`).
        exact: bool,
    },
    #[error(
        "page {page}{} would be {width}x{height} = {pixels} pixels, over the limit of {limit}",
        match .dpi { Some(dpi) => format!(" at {dpi}"), None => String::new() }
    )]
    PageTooLarge {
        page: u64,
        dpi: Option<Dpi>,
        width: u64,
        height: u64,
        pixels: u64,
        limit: u64,
    },
    #[error("page {page} at {dpi} would be {width}x{height}; the renderer takes at most {max} pixels a side")]
    PageSideTooLong {
        page: u64,
        dpi: Dpi,
        width: u64,
        height: u64,
        max: u64,
    },
    #[error(
        "page {page} embeds a {width}x{height} image = {pixels} pixels, over the limit of {limit}"
    )]
    EmbeddedImageTooLarge {
        page: u64,
        width: u64,
        height: u64,
        pixels: u64,
        limit: u64,
    },
    #[error("page {page} of {pages}: no such page")]
    NoSuchPage { page: u64, pages: usize },
    #[error("page {page}: {reason}")]
    UnreadablePage { page: u64, reason: String },
    #[error("render dpi {dpi} is out of range (1 to {MAX_DPI})")]
    Dpi { dpi: u32 },
    #[error(transparent)]
    Pages(#[from] PagesError),
    #[error("rendering was cancelled")]
    Cancelled,
    #[error("the {0} decoder panicked")]
    Panicked(&'static str),
}

/// A parsed document: its structure is known, no page has been rendered.
pub struct Document {
    inner: Inner,
    pages: Vec<PageInfo>,
    limits: DocumentLimits,
}

enum Inner {
    Pdf(Box<Pdf>),
    /// The file itself: each page opens its own decoder, so pages render independently.
    Tiff(Bytes),
}

impl fmt::Debug for Document {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Document")
            .field("kind", &self.kind())
            .field("pages", &self.pages.len())
            .finish_non_exhaustive()
    }
}

impl Document {
    /// Parses the structure of a PDF or TIFF under `limits`. Blocking, but cheap: no page is
    /// decoded or rendered. Inputs that [`sniff`] calls single images are refused, so callers
    /// sniff first and send those down the image path.
    pub fn open(file: Bytes, limits: &DocumentLimits) -> Result<Document, DocumentError> {
        if file.is_empty() {
            return Err(DocumentError::Empty);
        }
        if file.len() > limits.max_bytes {
            return Err(DocumentError::TooManyBytes {
                size: file.len(),
                limit: limits.max_bytes,
            });
        }
        let (inner, pages) = match sniff(&file) {
            Kind::Pdf => guarded("PDF", || open_pdf(file, limits))?,
            Kind::Tiff => guarded("TIFF", || open_tiff(file, limits))?,
            Kind::Image => return Err(DocumentError::NotADocument),
        };
        if pages.is_empty() {
            return Err(DocumentError::NoPages);
        }
        Ok(Document {
            inner,
            pages,
            limits: *limits,
        })
    }

    pub fn kind(&self) -> Kind {
        match self.inner {
            Inner::Pdf(_) => Kind::Pdf,
            Inner::Tiff(_) => Kind::Tiff,
        }
    }

    pub fn page_count(&self) -> usize {
        self.pages.len()
    }

    pub fn pages(&self) -> &[PageInfo] {
        &self.pages
    }

    /// Every page, in order: the selection when a request names none.
    pub fn page_indexes(&self) -> Vec<PageIndex> {
        self.pages.iter().map(|p| p.index).collect()
    }

    /// Parses a `pages` parameter such as `"1-3,5"` against this document.
    pub fn select(&self, spec: &str) -> Result<Vec<PageIndex>, PagesError> {
        parse_pages(spec, self.pages.len())
    }

    /// Refuses, before anything is rendered, a selection with a page that would break the pixel
    /// limit at `dpi`, naming the first such page.
    pub fn check(&self, pages: &[PageIndex], dpi: Dpi) -> Result<(), DocumentError> {
        for &index in pages {
            self.planned(index, dpi)?;
        }
        Ok(())
    }

    /// Renders (PDF) or decodes (TIFF) one page into 8-bit gray. Blocking and CPU-bound; the
    /// limits are checked again first, so a caller that skipped [`Document::check`] is still
    /// safe.
    pub fn render(&self, index: PageIndex, dpi: Dpi) -> Result<RenderedPage, DocumentError> {
        let (width, height, page_dpi) = self.planned(index, dpi)?;
        let (pixels, dpi) = match &self.inner {
            Inner::Pdf(pdf) => guarded("PDF", || render_pdf_page(pdf, index, width, height, dpi))?,
            Inner::Tiff(file) => (
                guarded("TIFF", || decode_tiff_page(file, index, &self.limits))?,
                page_dpi,
            ),
        };
        Ok(RenderedPage { index, pixels, dpi })
    }

    /// Renders `pages` in order, one when asked for, stopping with [`DocumentError::Cancelled`]
    /// as soon as `cancel` is set (checked before each page; a page being rendered finishes).
    pub fn render_each<'a>(
        &'a self,
        pages: &'a [PageIndex],
        dpi: Dpi,
        cancel: &'a AtomicBool,
    ) -> impl Iterator<Item = Result<RenderedPage, DocumentError>> + 'a {
        let mut stopped = false;
        pages.iter().map_while(move |&index| {
            if stopped {
                return None;
            }
            if cancel.load(Ordering::Relaxed) {
                stopped = true;
                return Some(Err(DocumentError::Cancelled));
            }
            Some(self.render(index, dpi))
        })
    }

    /// The pixel size and resolution `index` will have at `dpi`, if within the limits.
    fn planned(
        &self,
        index: PageIndex,
        dpi: Dpi,
    ) -> Result<(u32, u32, Option<Dpi>), DocumentError> {
        let info = self
            .pages
            .get(index.get())
            .ok_or(DocumentError::NoSuchPage {
                page: index.number(),
                pages: self.pages.len(),
            })?;
        let (width, height, page_dpi) = info.pixels_at(dpi);
        let pixels = width.saturating_mul(height);
        if pixels > self.limits.max_page_pixels {
            return Err(DocumentError::PageTooLarge {
                page: index.number(),
                dpi: match info.size {
                    PageSize::Points { .. } => Some(dpi),
                    PageSize::Pixels { .. } => None,
                },
                width,
                height,
                pixels,
                limit: self.limits.max_page_pixels,
            });
        }
        if matches!(self.inner, Inner::Pdf(_))
            && (width > MAX_RENDER_SIDE || height > MAX_RENDER_SIDE)
        {
            return Err(DocumentError::PageSideTooLong {
                page: index.number(),
                dpi,
                width,
                height,
                max: MAX_RENDER_SIDE,
            });
        }
        if let Inner::Pdf(pdf) = &self.inner {
            let limit = self
                .limits
                .max_page_pixels
                .saturating_mul(EMBEDDED_IMAGE_FACTOR);
            let oversized = pdf
                .pages()
                .get(index.get())
                .and_then(|page| guarded_option(|| oversized_image(page, limit)));
            if let Some((width, height)) = oversized {
                return Err(DocumentError::EmbeddedImageTooLarge {
                    page: index.number(),
                    width,
                    height,
                    pixels: width.saturating_mul(height),
                    limit,
                });
            }
        }
        // Both sides fit: a TIFF's are u32 already, a PDF's are under u16::MAX.
        let side = |n: u64| u32::try_from(n).unwrap_or(u32::MAX);
        Ok((side(width), side(height), page_dpi))
    }
}

/// How many times the page pixel limit an image embedded in a PDF page may hold: a 600 dpi scan
/// placed on a page rendered at 300 dpi is legitimate, a page hiding a gigapixel image is not.
const EMBEDDED_IMAGE_FACTOR: u64 = 4;

/// Image and form XObjects looked at per page, at most; nesting of forms, at most.
const MAX_XOBJECTS: usize = 4096;
const MAX_FORM_DEPTH: usize = 16;

/// hayro decodes an embedded image whole, at its own resolution, before scaling it to the page:
/// a page box within the limits can hide a 100000x100000 image behind a few bytes of Flate. This
/// finds the first image (or soft mask) of the page, or of the forms it draws, whose declared
/// size is over `limit`, from the dictionaries alone.
fn oversized_image(page: &hayro::hayro_syntax::page::Page<'_>, limit: u64) -> Option<(u64, u64)> {
    use hayro::hayro_syntax::object::{Dict, Name, Stream};

    let too_big = |dict: &Dict<'_>| -> Option<(u64, u64)> {
        let side = |long: &[u8], short: &[u8]| {
            dict.get::<u32>(long)
                .or_else(|| dict.get::<u32>(short))
                .map(u64::from)
        };
        let (w, h) = (side(b"Width", b"W")?, side(b"Height", b"H")?);
        (w.saturating_mul(h) > limit).then_some((w, h))
    };
    let mut seen = std::collections::HashSet::new();
    let mut stack = vec![(page.resources().x_objects.clone(), 0)];
    let mut visited = 0;
    while let Some((x_objects, depth)) = stack.pop() {
        for key in x_objects.keys() {
            visited += 1;
            if visited > MAX_XOBJECTS {
                return None;
            }
            let Some(stream) = x_objects.get::<Stream<'_>>(&*key) else {
                continue;
            };
            let dict = stream.dict();
            if let Some(id) = dict.obj_id() {
                if !seen.insert(id) {
                    continue;
                }
            }
            match dict.get::<Name<'_>>(b"Subtype").as_deref() {
                Some(b"Image") => {
                    if let Some(size) = too_big(dict) {
                        return Some(size);
                    }
                    let mask = dict.get::<Stream<'_>>(b"SMask");
                    if let Some(size) = mask.and_then(|mask| too_big(mask.dict())) {
                        return Some(size);
                    }
                }
                Some(b"Form") if depth < MAX_FORM_DEPTH => {
                    let nested = dict
                        .get::<Dict<'_>>(b"Resources")
                        .and_then(|r| r.get::<Dict<'_>>(b"XObject"));
                    if let Some(nested) = nested {
                        stack.push((nested, depth + 1));
                    }
                }
                _ => {}
            }
        }
    }
    None
}

/// [`guarded`] for a check that answers `None` when in doubt.
fn guarded_option<T>(work: impl FnOnce() -> Option<T>) -> Option<T> {
    catch_unwind(AssertUnwindSafe(work)).unwrap_or(None)
}

/// Runs a third-party decoder so that a panic in it on hostile input becomes an error for this
/// one document rather than a lost worker thread. (Fuzzing still sees the panic: the fuzzer's
/// panic hook aborts before unwinding starts.)
fn guarded<T>(
    decoder: &'static str,
    work: impl FnOnce() -> Result<T, DocumentError>,
) -> Result<T, DocumentError> {
    catch_unwind(AssertUnwindSafe(work)).unwrap_or(Err(DocumentError::Panicked(decoder)))
}

fn too_many_pages(pages: usize, limits: &DocumentLimits, exact: bool) -> DocumentError {
    DocumentError::TooManyPages {
        pages,
        limit: limits.max_pages,
        exact,
    }
}

fn open_pdf(file: Bytes, limits: &DocumentLimits) -> Result<(Inner, Vec<PageInfo>), DocumentError> {
    // hayro-syntax builds its whole page list in `Pdf::new`, so an over-long tree is refused
    // first, from the file, where it can be reached (see `page_tree`).
    if let Some(err) = precheck_refusal(page_tree::precheck(&file, limits.max_pages), limits) {
        return Err(err);
    }
    // hayro-syntax walks the page tree once, here, guarding against reference loops and
    // nesting deeper than 512. Where the pre-check could not reach, a tree of a million pages
    // is bounded only by the byte limit, and the count below still refuses it.
    let pdf = Pdf::new(BytesData(file)).map_err(|e| match e {
        LoadPdfError::Decryption(DecryptionError::PasswordProtected) => {
            DocumentError::PasswordNeeded
        }
        LoadPdfError::Decryption(DecryptionError::MissingIDEntry) => {
            DocumentError::Encryption("the file identifier the key derives from is missing")
        }
        LoadPdfError::Decryption(DecryptionError::InvalidEncryption) => {
            DocumentError::Encryption("the encryption dictionary is invalid")
        }
        LoadPdfError::Decryption(DecryptionError::UnsupportedAlgorithm) => {
            DocumentError::Encryption("the encryption algorithm is not supported")
        }
        LoadPdfError::Invalid => {
            DocumentError::UnreadablePdf("no cross-reference table or page tree found".into())
        }
    })?;
    let count = pdf.pages().len();
    if count > limits.max_pages {
        return Err(too_many_pages(count, limits, true));
    }
    let pages = pdf
        .pages()
        .iter()
        .enumerate()
        .map(|(i, page)| {
            let (width, height) = page.render_dimensions();
            PageInfo {
                // count <= max_pages, which no sane limit puts past u32.
                index: PageIndex(u32::try_from(i).unwrap_or(u32::MAX)),
                size: PageSize::Points {
                    width: f64::from(width),
                    height: f64::from(height),
                },
            }
        })
        .collect();
    Ok((Inner::Pdf(Box::new(pdf)), pages))
}

/// The error a pre-check outcome refuses the file with, if any.
fn precheck_refusal(check: page_tree::PreCheck, limits: &DocumentLimits) -> Option<DocumentError> {
    use page_tree::PreCheck;
    match check {
        PreCheck::Counted { .. } | PreCheck::Inconclusive { .. } => None,
        PreCheck::CountOverLimit { claimed } => Some(too_many_pages(claimed, limits, true)),
        PreCheck::PagesOverLimit { .. } => Some(too_many_pages(
            limits.max_pages.saturating_add(1),
            limits,
            false,
        )),
        PreCheck::TooManyNodes { .. } => Some(DocumentError::UnreadablePdf(format!(
            "the page tree is too large to walk for a limit of {} pages: over {} nodes, or \
             kids shared past one reading of the file",
            limits.max_pages,
            page_tree::node_budget(limits.max_pages)
        ))),
        PreCheck::TooDeep => Some(DocumentError::UnreadablePdf(format!(
            "the page tree nests deeper than {}",
            page_tree::MAX_DEPTH
        ))),
    }
}

/// Lets hayro read the request body in place: `Bytes` is a cheap, shared view of it.
struct BytesData(Bytes);

impl AsRef<[u8]> for BytesData {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl From<BytesData> for hayro::hayro_syntax::PdfData {
    fn from(data: BytesData) -> Self {
        std::sync::Arc::new(data).into()
    }
}

/// Renders at exactly `width`x`height` (computed by [`PageInfo::pixels_at`] for `dpi`), scaling
/// each axis so the page box fills it; or, for a page that is one scan at no more than `dpi`,
/// decodes that scan at its own resolution. The pixels and their resolution.
fn render_pdf_page(
    pdf: &Pdf,
    index: PageIndex,
    width: u32,
    height: u32,
    dpi: Dpi,
) -> Result<(Pixels, Option<Dpi>), DocumentError> {
    let page = pdf
        .pages()
        .get(index.get())
        .ok_or(DocumentError::NoSuchPage {
            page: index.number(),
            pages: pdf.pages().len(),
        })?;
    if let Some((scan, native)) = scan::native(page, dpi) {
        return Ok((scan, Some(native)));
    }
    // planned() kept both sides within u16.
    let (w16, h16) = (
        u16::try_from(width).unwrap_or(u16::MAX),
        u16::try_from(height).unwrap_or(u16::MAX),
    );
    let (page_width, page_height) = page.render_dimensions();
    let transform = Affine::scale_non_uniform(
        f64::from(width) / f64::from(page_width),
        f64::from(height) / f64::from(page_height),
    ) * page.initial_transform(true).to_kurbo();

    let cache = RenderCache::new();
    let mut ctx = RenderContext::new(w16, h16);
    hayro::render_into(
        page,
        &cache,
        &InterpreterSettings::default(),
        &RenderSettings::default(),
        &mut ctx,
        transform,
    );
    ctx.flush();
    let mut pixmap = Pixmap::new(w16, h16);
    ctx.render_with(
        &mut pixmap,
        &mut Resources::default(),
        RasterizerSettings {
            target_init: TargetInit::Clear(WHITE),
            ..Default::default()
        },
    );
    drop(ctx);
    // Opaque (cleared to white), so premultiplied and straight colour agree.
    let gray = pixmap
        .data()
        .iter()
        .map(|p| luma(p.r, p.g, p.b))
        .collect::<Vec<u8>>();
    Ok((Pixels::gray(gray, width, height), Some(dpi)))
}

/// ITU-R BT.601 luma, in integers.
fn luma(r: u8, g: u8, b: u8) -> u8 {
    ((u32::from(r) * 299 + u32::from(g) * 587 + u32::from(b) * 114 + 500) / 1000) as u8
}

/// The tiff crate's allocation fences, sized from the page limit: 16-bit RGBA is the widest
/// sample layout we accept.
fn tiff_limits(limits: &DocumentLimits) -> Limits {
    let mut fences = Limits::default();
    let biggest = usize::try_from(limits.max_page_pixels.saturating_mul(8)).unwrap_or(usize::MAX);
    fences.decoding_buffer_size = biggest;
    fences.intermediate_buffer_size = biggest;
    fences
}

fn tiff_error(e: tiff::TiffError) -> DocumentError {
    DocumentError::UnreadableTiff(e.to_string())
}

fn open_tiff(
    file: Bytes,
    limits: &DocumentLimits,
) -> Result<(Inner, Vec<PageInfo>), DocumentError> {
    let mut decoder = Decoder::new(Cursor::new(&file[..]))
        .map_err(tiff_error)?
        .with_limits(tiff_limits(limits));
    let mut pages = Vec::new();
    loop {
        if pages.len() == limits.max_pages {
            // One directory past the limit is enough to refuse; the rest are never read.
            return Err(too_many_pages(pages.len() + 1, limits, false));
        }
        let (width, height) = decoder.dimensions().map_err(tiff_error)?;
        pages.push(PageInfo {
            index: PageIndex(u32::try_from(pages.len()).unwrap_or(u32::MAX)),
            size: PageSize::Pixels {
                width,
                height,
                dpi: tiff_dpi(&mut decoder),
            },
        });
        if !decoder.more_images() {
            break;
        }
        // A directory chain that loops back is reported here by the tiff crate.
        decoder.next_image().map_err(tiff_error)?;
    }
    Ok((Inner::Tiff(file), pages))
}

/// The horizontal resolution a TIFF directory declares, in dots per inch; `None` when absent,
/// unitless (ResolutionUnit 1) or absurd.
fn tiff_dpi<R: std::io::Read + std::io::Seek>(decoder: &mut Decoder<R>) -> Option<Dpi> {
    use tiff::decoder::ifd::Value;
    // The tag is a RATIONAL; the tiff crate's `into_f64` accepts only DOUBLE, so take it apart.
    let per_unit = match decoder.find_tag(Tag::XResolution).ok()?? {
        Value::Rational(n, d) if d != 0 => f64::from(n) / f64::from(d),
        Value::Float(v) => f64::from(v),
        Value::Double(v) => v,
        Value::Short(v) => f64::from(v),
        Value::Unsigned(v) => f64::from(v),
        _ => return None,
    };
    let unit = decoder
        .find_tag_unsigned::<u16>(Tag::ResolutionUnit)
        .ok()
        .flatten()
        .and_then(ResolutionUnit::from_u16)
        .unwrap_or(ResolutionUnit::Inch);
    let per_inch = match unit {
        ResolutionUnit::Inch => per_unit,
        ResolutionUnit::Centimeter => per_unit * 2.54,
        _ => return None,
    };
    if !(per_inch.is_finite() && per_inch >= 1.0) {
        return None;
    }
    Dpi::new(per_inch.round() as u32).ok()
}

fn decode_tiff_page(
    file: &Bytes,
    index: PageIndex,
    limits: &DocumentLimits,
) -> Result<Pixels, DocumentError> {
    let unreadable = |reason: String| DocumentError::UnreadablePage {
        page: index.number(),
        reason,
    };
    let mut decoder = Decoder::new(Cursor::new(&file[..]))
        .map_err(tiff_error)?
        .with_limits(tiff_limits(limits));
    decoder
        .seek_to_image(index.get())
        .map_err(|e| unreadable(e.to_string()))?;
    let (width, height) = decoder
        .dimensions()
        .map_err(|e| unreadable(e.to_string()))?;
    let color = decoder.colortype().map_err(|e| unreadable(e.to_string()))?;
    let data = decoder
        .read_image()
        .map_err(|e| unreadable(e.to_string()))?;
    let gray = to_gray(data, color, width, height)
        .ok_or_else(|| unreadable(format!("{color:?} samples are not supported")))?;
    Ok(Pixels::gray(gray, width, height))
}

/// Converts decoded TIFF samples to 8-bit gray, or `None` for layouts a scan does not use
/// (palette, CMYK, floats) or a buffer shorter than its dimensions.
fn to_gray(data: DecodingResult, color: ColorType, width: u32, height: u32) -> Option<Vec<u8>> {
    let (w, h) = (width as usize, height as usize);
    let pixels = w.checked_mul(h)?;
    let gray = match (color, data) {
        // Bilevel (fax, CCITT G4): rows packed MSB first, each padded to a byte. The decoder has
        // already turned WhiteIsZero around, so a set bit is white.
        (ColorType::Gray(1), DecodingResult::U8(bits)) => {
            let stride = w.div_ceil(8);
            if bits.len() < stride.checked_mul(h)? {
                return None;
            }
            let mut out = Vec::with_capacity(pixels);
            for row in bits.chunks_exact(stride).take(h) {
                out.extend((0..w).map(|x| {
                    if row[x / 8] & (0x80 >> (x % 8)) != 0 {
                        255
                    } else {
                        0
                    }
                }));
            }
            out
        }
        (ColorType::Gray(8), DecodingResult::U8(v)) => take(v, pixels)?,
        (ColorType::Gray(16), DecodingResult::U16(v)) => {
            v.get(..pixels)?.iter().map(|s| (s >> 8) as u8).collect()
        }
        (ColorType::GrayA(8), DecodingResult::U8(v)) => v
            .get(..pixels.checked_mul(2)?)?
            .chunks_exact(2)
            .map(|p| p[0])
            .collect(),
        (ColorType::RGB(8), DecodingResult::U8(v)) => v
            .get(..pixels.checked_mul(3)?)?
            .chunks_exact(3)
            .map(|p| luma(p[0], p[1], p[2]))
            .collect(),
        (ColorType::RGBA(8), DecodingResult::U8(v)) => v
            .get(..pixels.checked_mul(4)?)?
            .chunks_exact(4)
            .map(|p| luma(p[0], p[1], p[2]))
            .collect(),
        (ColorType::RGB(16), DecodingResult::U16(v)) => v
            .get(..pixels.checked_mul(3)?)?
            .chunks_exact(3)
            .map(|p| luma((p[0] >> 8) as u8, (p[1] >> 8) as u8, (p[2] >> 8) as u8))
            .collect(),
        _ => return None,
    };
    Some(gray)
}

fn take(mut v: Vec<u8>, len: usize) -> Option<Vec<u8>> {
    if v.len() < len {
        return None;
    }
    v.truncate(len);
    Some(v)
}

/// A `pages` parameter that cannot be honoured, naming the part at fault.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum PagesError {
    #[error("pages: empty; expected page numbers or ranges such as '1-3,5'")]
    Empty,
    #[error("pages '{part}': expected a page number or a range such as '1-3'")]
    Syntax { part: String },
    #[error("pages '{part}': pages are numbered from 1")]
    Zero { part: String },
    #[error("pages '{part}': the range runs backwards")]
    Reversed { part: String },
    #[error("pages '{part}': the document has {pages} pages")]
    OutOfRange { part: String, pages: usize },
}

/// Parses a page selection as users write it — 1-based numbers and inclusive ranges separated
/// by commas, spaces allowed, e.g. `"1-3, 5"` — into 0-based indexes in ascending order, each
/// once. Every part is checked against `pages`, the document's page count.
pub fn parse_pages(spec: &str, pages: usize) -> Result<Vec<PageIndex>, PagesError> {
    if spec.trim().is_empty() {
        return Err(PagesError::Empty);
    }
    let mut wanted = std::collections::BTreeSet::new();
    for raw in spec.split(',') {
        let part = raw.trim();
        let owned = || part.to_string();
        let number = |s: &str| -> Result<u64, PagesError> {
            let s = s.trim();
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                return Err(PagesError::Syntax { part: owned() });
            }
            // All digits: the only failure left is overflow, which is out of range anyway.
            let n = s.parse::<u64>().unwrap_or(u64::MAX);
            if n == 0 {
                return Err(PagesError::Zero { part: owned() });
            }
            Ok(n)
        };
        let (first, last) = match part.split_once('-') {
            Some((a, b)) => (number(a)?, number(b)?),
            None => {
                let n = number(part)?;
                (n, n)
            }
        };
        if first > last {
            return Err(PagesError::Reversed { part: owned() });
        }
        if last > pages as u64 {
            return Err(PagesError::OutOfRange {
                part: owned(),
                pages,
            });
        }
        // Within the page count, so within u32 for any document that passed the page limit.
        for n in first..=last {
            wanted.insert(PageIndex(u32::try_from(n - 1).unwrap_or(u32::MAX)));
        }
    }
    Ok(wanted.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idx(numbers: &[u32]) -> Vec<PageIndex> {
        numbers.iter().map(|n| PageIndex(n - 1)).collect()
    }

    #[test]
    fn sniffs_from_the_first_bytes() {
        assert_eq!(sniff(b"%PDF-1.7\n"), Kind::Pdf);
        assert_eq!(sniff(b"\xef\xbb\xbf\r\n%PDF-1.4\n"), Kind::Pdf);
        assert_eq!(sniff(b"II*\0\x08\0\0\0"), Kind::Tiff);
        assert_eq!(sniff(b"MM\0*\0\0\0\x08"), Kind::Tiff);
        assert_eq!(sniff(b"\x89PNG\r\n\x1a\n"), Kind::Image);
        assert_eq!(sniff(b""), Kind::Image);
        assert_eq!(sniff(b"II"), Kind::Image);
        let mut late = vec![b' '; PDF_HEADER_WINDOW];
        late.extend(b"%PDF-1.7");
        assert_eq!(
            sniff(&late),
            Kind::Image,
            "a header past the window is not one"
        );
    }

    #[test]
    fn pages_in_order_once_each() {
        assert_eq!(parse_pages("1-3,5", 5), Ok(idx(&[1, 2, 3, 5])));
        assert_eq!(parse_pages(" 5 , 1 - 2 ", 5), Ok(idx(&[1, 2, 5])));
        assert_eq!(parse_pages("2,2,1-3,3", 5), Ok(idx(&[1, 2, 3])));
        assert_eq!(parse_pages("4-4", 5), Ok(idx(&[4])));
        assert_eq!(parse_pages("1-5", 5), Ok(idx(&[1, 2, 3, 4, 5])));
    }

    #[test]
    fn bad_page_specs_name_the_part() {
        assert_eq!(parse_pages("", 5), Err(PagesError::Empty));
        assert_eq!(parse_pages("  ", 5), Err(PagesError::Empty));
        let part = |s: &str| s.to_string();
        assert_eq!(
            parse_pages("1,,2", 5),
            Err(PagesError::Syntax { part: part("") })
        );
        assert_eq!(
            parse_pages("1-", 5),
            Err(PagesError::Syntax { part: part("1-") })
        );
        assert_eq!(
            parse_pages("-2", 5),
            Err(PagesError::Syntax { part: part("-2") })
        );
        assert_eq!(
            parse_pages("1-2-3", 5),
            Err(PagesError::Syntax {
                part: part("1-2-3")
            })
        );
        assert_eq!(
            parse_pages("+1", 5),
            Err(PagesError::Syntax { part: part("+1") })
        );
        assert_eq!(
            parse_pages("one", 5),
            Err(PagesError::Syntax { part: part("one") })
        );
        assert_eq!(
            parse_pages("0", 5),
            Err(PagesError::Zero { part: part("0") })
        );
        assert_eq!(
            parse_pages("0-2", 5),
            Err(PagesError::Zero { part: part("0-2") })
        );
        assert_eq!(
            parse_pages("3-1", 5),
            Err(PagesError::Reversed { part: part("3-1") })
        );
        let err = parse_pages("1,7-9", 5).unwrap_err();
        assert_eq!(err.to_string(), "pages '7-9': the document has 5 pages");
        let huge = "99999999999999999999999";
        assert_eq!(
            parse_pages(huge, 5),
            Err(PagesError::OutOfRange {
                part: part(huge),
                pages: 5
            })
        );
        // A huge range is refused before it is expanded.
        assert!(parse_pages("1-18446744073709551615", 5).is_err());
    }

    #[test]
    fn documents_can_move_to_a_blocking_thread_and_be_shared() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<Document>();
        send_sync::<RenderedPage>();
    }

    #[test]
    fn dpi_is_bounded() {
        assert_eq!(Dpi::new(300).map(Dpi::get), Ok(300));
        assert!(Dpi::new(0).is_err());
        assert_eq!(
            Dpi::new(MAX_DPI + 1).unwrap_err().to_string(),
            "render dpi 1201 is out of range (1 to 1200)"
        );
    }

    #[test]
    fn letter_at_300_dpi_is_2550_by_3300() {
        let page = PageInfo {
            index: PageIndex(0),
            size: PageSize::Points {
                // What hayro reports, as f32, for a Letter page.
                width: f64::from(612f32),
                height: f64::from(792f32),
            },
        };
        let dpi = Dpi::new(300).unwrap();
        assert_eq!(page.pixels_at(dpi), (2550, 3300, Some(dpi)));
    }

    #[test]
    fn bilevel_rows_unpack_with_padding() {
        // 10x2, one row white-black alternating, one all black; 2 bytes a row.
        let bits = vec![0b1010_1010, 0b1000_0000, 0, 0];
        let gray = to_gray(DecodingResult::U8(bits), ColorType::Gray(1), 10, 2).unwrap();
        assert_eq!(
            gray,
            [255, 0, 255, 0, 255, 0, 255, 0, 255, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(
            to_gray(DecodingResult::U8(vec![0; 3]), ColorType::Gray(1), 10, 2),
            None,
            "short buffers are refused, not indexed past"
        );
    }

    #[test]
    fn empty_and_oversized_inputs() {
        let limits = DocumentLimits {
            max_bytes: 16,
            max_pages: 5,
            max_page_pixels: 1000,
        };
        assert_eq!(
            Document::open(Bytes::new(), &limits).unwrap_err(),
            DocumentError::Empty
        );
        assert!(matches!(
            Document::open(Bytes::from_static(&[0; 17]), &limits),
            Err(DocumentError::TooManyBytes {
                size: 17,
                limit: 16
            })
        ));
        assert_eq!(
            Document::open(Bytes::from_static(b"\x89PNG\r\n\x1a\n"), &limits).unwrap_err(),
            DocumentError::NotADocument
        );
        let err = Document::open(Bytes::from_static(b"%PDF-1.7 garbage"), &limits).unwrap_err();
        assert!(matches!(err, DocumentError::UnreadablePdf(_)), "{err}");
        let err =
            Document::open(Bytes::from_static(b"II*\0\xff\xff\xff\x7f"), &limits).unwrap_err();
        assert!(matches!(err, DocumentError::UnreadableTiff(_)), "{err}");
    }
}
