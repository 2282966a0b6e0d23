//! The OCR model as the protocols see it: its contract (name, version, tensors) and the one
//! inference path. gRPC, REST and the gateway all build an [`InferRequest`] and call
//! [`Model::infer`]; nothing else reaches the engine pool.

mod cache;
mod error;
mod params;
mod stats;

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use tokio::sync::Semaphore;

pub use self::cache::{Key, ResultCache};
pub use self::error::InferError;
pub use self::params::{OptionsBuilder, ParamValue, OSD_LANG};
pub use self::stats::{DurationTotal, Stats, StatsSnapshot};

use ::metrics::{counter, gauge, histogram};
use tracing::Instrument;

use futures::{stream::FuturesOrdered, StreamExt};
use tokio::sync::oneshot;

use crate::{
    ocr::{
        document, output, Document, Dpi, EngineError, EnginePool, ImageInput, Input, OcrOptions,
        OcrResult, OutputKind, OutputSet, PageIndex, Task, TaskError,
    },
    telemetry::{self, metrics},
};

/// The platform reported in model metadata.
pub const PLATFORM: &str = "tesseract";
/// The only version of the model; requests may name it or leave the version empty.
pub const VERSION: &str = "1";
/// The name the model is served under unless configured otherwise.
pub const DEFAULT_MODEL_NAME: &str = "ocr";
/// The model's one input.
pub const INPUT_NAME: &str = "image";

/// One tensor of the model's signature. `-1` marks a variable dimension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TensorSpec {
    pub name: &'static str,
    pub datatype: &'static str,
    pub shape: &'static [i64],
}

/// The input as metadata declares it: one encoded image file per element. Raw UINT8 pixels
/// ([H,W], [H,W,C], [N,H,W,C]) are accepted too.
pub const INPUT: TensorSpec = TensorSpec {
    name: INPUT_NAME,
    datatype: "BYTES",
    shape: &[-1],
};

impl OutputKind {
    pub fn spec(self) -> TensorSpec {
        let datatype = match self {
            OutputKind::Confidence => "FP32",
            _ => "BYTES",
        };
        TensorSpec {
            name: self.name(),
            datatype,
            shape: &[-1],
        }
    }
}

/// An inference request in protocol-neutral form.
#[derive(Debug)]
pub struct InferRequest {
    pub id: String,
    pub images: Vec<ImageInput>,
    pub options: OcrOptions,
    /// The outputs to return, in response order, without duplicates.
    pub outputs: Vec<OutputKind>,
    pub deadline: Option<Instant>,
}

#[derive(Debug)]
pub struct InferResponse {
    pub id: String,
    pub outputs: Vec<OutputKind>,
    /// One result per input image, in input order.
    pub results: Vec<OcrResult>,
}

/// How the model admits work: a cap on concurrent inferences (beyond it requests fail at
/// once) and on how long any one may take.
#[derive(Clone, Copy, Debug)]
pub struct Admission {
    pub max_concurrent_requests: usize,
    pub request_timeout: Option<Duration>,
}

impl Default for Admission {
    fn default() -> Admission {
        Admission {
            max_concurrent_requests: Semaphore::MAX_PERMITS,
            request_timeout: None,
        }
    }
}

/// Why the model should not be sent traffic now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotReady {
    /// Engines are still loading the default language.
    Loading,
    /// The queue has stayed nearly full; probes fail so traffic goes elsewhere.
    Overloaded,
    /// Shutting down: in-flight work finishes, new traffic should go elsewhere.
    Draining,
}

impl NotReady {
    pub fn reason(self) -> &'static str {
        match self {
            NotReady::Loading => "engines are loading the default language",
            NotReady::Overloaded => "overloaded: the queue has stayed nearly full",
            NotReady::Draining => "shutting down",
        }
    }
}

pub struct Model {
    name: String,
    pool: EnginePool,
    stats: Stats,
    in_flight: Arc<Semaphore>,
    admission: Admission,
    draining: AtomicBool,
    overloaded: AtomicBool,
    cache: Option<ResultCache>,
}

impl Model {
    pub fn new(
        name: String,
        pool: EnginePool,
        admission: Admission,
        cache: Option<ResultCache>,
    ) -> Arc<Model> {
        Arc::new(Model {
            name,
            pool,
            cache,
            stats: Stats::default(),
            in_flight: Arc::new(Semaphore::new(admission.max_concurrent_requests)),
            admission,
            draining: AtomicBool::new(false),
            overloaded: AtomicBool::new(false),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pool(&self) -> &EnginePool {
        &self.pool
    }

    pub fn stats(&self) -> StatsSnapshot {
        self.stats.snapshot()
    }

    /// Whether probes should send traffic here. Requests are still served while overloaded
    /// or draining; only a server whose engines are loading refuses them.
    pub fn readiness(&self) -> Result<(), NotReady> {
        if !self.pool.is_ready() {
            Err(NotReady::Loading)
        } else if self.draining.load(Ordering::Acquire) {
            Err(NotReady::Draining)
        } else if self.overloaded.load(Ordering::Acquire) {
            Err(NotReady::Overloaded)
        } else {
            Ok(())
        }
    }

    pub fn is_ready(&self) -> bool {
        self.readiness().is_ok()
    }

    /// Readiness turns false for good: the server is shutting down.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    pub fn set_overloaded(&self, overloaded: bool) {
        self.overloaded.store(overloaded, Ordering::Release);
    }

    /// Sets the gauges and counters that mirror the pool's state. Called when Prometheus
    /// scrapes, so the request path pays nothing for them.
    pub fn export_metrics(&self) {
        let pool = &self.pool;
        gauge!(metrics::QUEUE_DEPTH).set(pool.queued() as f64);
        gauge!(metrics::QUEUE_CAPACITY).set(pool.capacity() as f64);
        gauge!(metrics::WORKERS).set(pool.workers() as f64);
        gauge!(metrics::ENGINES_BUSY).set(pool.busy() as f64);
        gauge!(metrics::READY).set(if self.is_ready() { 1.0 } else { 0.0 });
        let (pushed, popped) = pool.pushed_popped();
        counter!(metrics::QUEUE_PUSHED).absolute(pushed as u64);
        counter!(metrics::QUEUE_POPPED).absolute(popped as u64);
        let dropped = pool.dropped();
        for (reason, count) in [
            ("abandoned", dropped.abandoned),
            ("expired", dropped.expired),
            ("cancelled", dropped.cancelled),
        ] {
            counter!(metrics::IMAGES_DROPPED, "reason" => reason).absolute(count as u64);
        }
        counter!(metrics::PAGES_SPLIT).absolute(pool.pages_split() as u64);
        for (lang, count) in pool.engines_loaded() {
            gauge!(metrics::ENGINES_LOADED, "lang" => lang).set(count as f64);
        }
    }

    /// The options a request starts from before its parameters apply.
    pub fn default_options(&self) -> OcrOptions {
        OcrOptions::new(self.pool.default_lang().clone())
    }

    pub fn options_builder(&self) -> OptionsBuilder<'_> {
        OptionsBuilder::new(
            self.pool.languages(),
            self.default_options(),
            self.pool.max_render_dpi(),
        )
    }

    /// Checks that a request addresses this model; an empty version means the current one.
    pub fn resolve(&self, name: &str, version: &str) -> Result<(), InferError> {
        if name != self.name {
            return Err(InferError::ModelNotFound {
                requested: name.to_owned(),
                served: self.name.clone(),
            });
        }
        if !version.is_empty() && version != VERSION {
            return Err(InferError::VersionNotFound {
                model: self.name.clone(),
                requested: version.to_owned(),
                available: VERSION.to_owned(),
            });
        }
        Ok(())
    }

    /// Recognises every image of the request across the pool and returns the results in input
    /// order. Fails as a whole if any image fails, naming the image.
    pub async fn infer(&self, request: InferRequest) -> Result<InferResponse, InferError> {
        let started = Instant::now();
        let bytes = request.images.iter().map(ImageInput::len).sum();
        telemetry::note_inference(&self.name, request.images.len(), bytes);
        let span = tracing::info_span!(
            "infer",
            model = %self.name,
            images = request.images.len() as i64,
            lang = request.options.lang.as_str(),
        );
        let result = self.run(request).instrument(span).await;
        let elapsed = started.elapsed();
        match &result {
            Ok(response) => {
                let timings: Vec<_> = response.results.iter().map(|r| r.timings).collect();
                self.stats.record_success(&timings, elapsed);
                for result in response.results.iter().filter(|r| !r.cached) {
                    histogram!(metrics::IMAGE_PIXELS).record(result.pixels as f64);
                    histogram!(metrics::QUEUE_WAIT).record(result.timings.queue.as_secs_f64());
                    histogram!(metrics::DECODE).record(result.timings.decode.as_secs_f64());
                    histogram!(metrics::RECOGNITION).record(result.timings.recognize.as_secs_f64());
                }
                counter!(metrics::IMAGES).increment(response.results.len() as u64);
            }
            Err(_) => self.stats.record_failure(elapsed),
        }
        histogram!(metrics::KSERVE_PREDICT, "model_name" => self.name.clone())
            .record(elapsed.as_secs_f64());
        result
    }

    async fn run(&self, request: InferRequest) -> Result<InferResponse, InferError> {
        if !self.pool.is_ready() {
            return Err(InferError::NotReady(self.name.clone()));
        }
        // Shed at once rather than pile up: the client retries elsewhere or later.
        let _permit =
            self.in_flight
                .clone()
                .try_acquire_owned()
                .map_err(|_| InferError::Overloaded {
                    limit: self.admission.max_concurrent_requests,
                })?;
        if request.images.is_empty() {
            return Err(InferError::InvalidInput(format!(
                "input '{INPUT_NAME}' has no elements"
            )));
        }
        let options = Arc::new(request.options);
        // Every element is checked before any is queued: an oversized image, a document over a
        // limit or a bad page range is refused before any work starts.
        let mut elements = Vec::with_capacity(request.images.len());
        for (index, image) in request.images.into_iter().enumerate() {
            elements.push(self.inspect(index, image, &options).await?);
        }
        let cap = self
            .admission
            .request_timeout
            .and_then(|t| deadline_after(Instant::now(), t));
        let deadline = earliest(request.deadline, cap);
        if deadline.is_some_and(|d| d <= Instant::now()) {
            return Err(InferError::DeadlineExceeded);
        }

        let outputs: OutputSet = request.outputs.iter().copied().collect();
        let work = Work {
            options,
            outputs,
            page_outputs: page_outputs(outputs),
            deadline,
        };
        let collect = self.read(elements, &work);
        let results = match deadline {
            Some(deadline) => tokio::time::timeout_at(deadline.into(), collect)
                .await
                .map_err(|_| InferError::DeadlineExceeded)??,
            None => collect.await?,
        };
        Ok(InferResponse {
            id: request.id,
            outputs: request.outputs,
            results,
        })
    }

    /// Checks what can be known of one element before any work: an image's header, or a
    /// document's structure, page selection and page sizes.
    async fn inspect(
        &self,
        index: usize,
        image: ImageInput,
        options: &Arc<OcrOptions>,
    ) -> Result<Element, InferError> {
        let document = match &image {
            ImageInput::Encoded(file) if document::sniff(file) != document::Kind::Image => {
                file.clone()
            }
            _ => {
                image
                    .inspect(self.pool.limits())
                    .map_err(|source| InferError::Image { index, source })?;
                return Ok(Element::Image(image));
            }
        };
        let limits = *self.pool.document_limits();
        let options = options.clone();
        let opened = tokio::task::spawn_blocking(move || {
            let document = Document::open(document, &limits)?;
            let pages = match &options.pages {
                Some(spec) => document.select(spec)?,
                None => document.page_indexes(),
            };
            document.check(&pages, options.render_dpi)?;
            Ok((document, pages))
        })
        .await
        .map_err(|_| InferError::Internal("opening a document panicked".into()))?;
        let (document, pages) = opened.map_err(|source| InferError::Document { index, source })?;
        Ok(Element::Document {
            document: Arc::new(document),
            pages,
        })
    }

    /// Reads every element, images queued as one batch (all or nothing) and documents page by
    /// page beside them; the results in element order.
    async fn read(
        &self,
        elements: Vec<Element>,
        work: &Work,
    ) -> Result<Vec<OcrResult>, InferError> {
        let cache = |image: &ImageInput| {
            let cache = self.cache.as_ref()?;
            Some((cache, Key::new(image, &work.options, work.outputs)))
        };
        let mut tasks = Vec::new();
        let mut reads = Vec::with_capacity(elements.len());
        for (index, element) in elements.into_iter().enumerate() {
            match element {
                Element::Image(image) => {
                    let cached = cache(&image);
                    if let Some(mut hit) = cached.and_then(|(cache, key)| cache.get(&key)) {
                        hit.cached = true;
                        hit.timings = Default::default();
                        reads.push(Read::Done(Box::new(hit)));
                        continue;
                    }
                    histogram!(metrics::IMAGE_BYTES).record(image.len() as f64);
                    let key = cached.map(|(_, key)| key);
                    tasks.push(work.task(
                        Input::Image(image),
                        tracing::info_span!(
                            "image",
                            // Span numbers as i64: OpenTelemetry has no unsigned integers.
                            batch_index = index as i64,
                        ),
                    ));
                    reads.push(Read::Image { index, key });
                }
                Element::Document { document, pages } => reads.push(Read::Document {
                    index,
                    document,
                    pages,
                }),
            }
        }
        let mut receivers = match tasks.is_empty() {
            true => Vec::new(),
            false => self.pool.submit(tasks)?,
        }
        .into_iter();

        // Dropping these futures (on an error or at the deadline) cancels the pages still
        // queued or running, and stops rendering.
        let reads = reads.into_iter().map(|read| {
            let receiver = match read {
                Read::Image { .. } => receivers.next(),
                _ => None,
            };
            async move {
                match read {
                    Read::Done(result) => Ok(*result),
                    Read::Image { index, key } => {
                        let receiver = receiver.ok_or_else(worker_gone)?;
                        let page = receive(index, receiver).await?;
                        let result = assemble(index, vec![page], work.outputs)?;
                        if let (Some(cache), Some(key)) = (&self.cache, key) {
                            cache.insert(key, &result);
                        }
                        Ok(result)
                    }
                    Read::Document {
                        index,
                        document,
                        pages,
                    } => {
                        let pages = self.read_pages(index, document, pages, work).await?;
                        assemble(index, pages, work.outputs)
                    }
                }
            }
        });
        futures::future::try_join_all(reads).await
    }

    /// Renders a document's pages just in time and recognises them across the pool: at most
    /// one page per engine, plus one rendered ahead, is in memory or in the queue at once,
    /// whatever the document's length.
    async fn read_pages(
        &self,
        index: usize,
        document: Arc<Document>,
        pages: Vec<PageIndex>,
        work: &Work,
    ) -> Result<Vec<OcrResult>, InferError> {
        let window = self.pool.workers() + 1;
        let mut results = Vec::with_capacity(pages.len());
        let mut in_flight = FuturesOrdered::new();
        let mut first = true;
        let mut pages = pages.into_iter();
        counter!(metrics::DOCUMENT_PAGES).increment(pages.len() as u64);
        loop {
            while in_flight.len() < window {
                let Some(page) = pages.next() else { break };
                let more_follow = pages.len() > 0;
                let dpi = work.options.render_dpi;
                let input = render(index, document.clone(), page, dpi, more_follow).await?;
                let span = tracing::info_span!(
                    "page",
                    batch_index = index as i64,
                    page = page.number() as i64
                );
                let task = work.task(input, span);
                // The first page is admitted as any batch is, or refused at once; the rest
                // follow it.
                let receiver = match std::mem::take(&mut first) {
                    true => self
                        .pool
                        .submit(vec![task])?
                        .pop()
                        .ok_or_else(worker_gone)?,
                    false => self.pool.submit_more(task),
                };
                in_flight.push_back(receive(index, receiver));
            }
            match in_flight.next().await {
                Some(result) => results.push(result?),
                None => return Ok(results),
            }
        }
    }
}

/// One element of a request, checked and ready to read.
enum Element {
    Image(ImageInput),
    Document {
        document: Arc<Document>,
        pages: Vec<PageIndex>,
    },
}

/// How one element of a batch will be read.
enum Read {
    Done(Box<OcrResult>),
    Image {
        index: usize,
        key: Option<Key>,
    },
    Document {
        index: usize,
        document: Arc<Document>,
        pages: Vec<PageIndex>,
    },
}

/// What every page of a request shares.
struct Work {
    options: Arc<OcrOptions>,
    /// The outputs of each element.
    outputs: OutputSet,
    /// What each page must compute for them.
    page_outputs: OutputSet,
    deadline: Option<Instant>,
}

impl Work {
    fn task(&self, input: Input, span: tracing::Span) -> Task {
        Task {
            input,
            options: self.options.clone(),
            outputs: self.page_outputs,
            deadline: self.deadline,
            span,
        }
    }
}

/// The outputs a page computes so that its element gets `outputs`: the `pages` summary is
/// assembled from each page's text and confidence.
fn page_outputs(outputs: OutputSet) -> OutputSet {
    match outputs.contains(OutputKind::Pages) {
        true => outputs
            .without(OutputKind::Pages)
            .with(OutputKind::Text)
            .with(OutputKind::Confidence),
        false => outputs,
    }
}

/// Renders one page on the blocking pool: never on the runtime's threads, never on an engine.
async fn render(
    index: usize,
    document: Arc<Document>,
    page: PageIndex,
    dpi: Dpi,
    more_follow: bool,
) -> Result<Input, InferError> {
    let rendered = tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        document.render(page, dpi).map(|page| Input::Page {
            page,
            rendered_in: started.elapsed(),
            more_follow,
        })
    })
    .await
    .map_err(|_| InferError::Internal("rendering a page panicked".into()))?;
    rendered.map_err(|source| InferError::Document { index, source })
}

async fn receive(
    index: usize,
    receiver: oneshot::Receiver<Result<OcrResult, TaskError>>,
) -> Result<OcrResult, InferError> {
    let reply = receiver.await.map_err(|_| worker_gone())?;
    reply.map_err(|error| task_error(index, error))
}

fn assemble(
    index: usize,
    pages: Vec<OcrResult>,
    outputs: OutputSet,
) -> Result<OcrResult, InferError> {
    output::assemble(pages, outputs)
        .map_err(|error| InferError::Internal(format!("input 'image'[{index}]: {error}")))
}

fn worker_gone() -> InferError {
    InferError::Internal("an engine worker exited".into())
}

/// The instant `timeout` after `from`. Timeouts come from clients (`grpc-timeout`,
/// `x-request-timeout`, Triton's `timeout`), so one too far away to represent is no deadline
/// at all rather than an overflow; the server's `--request-timeout` still bounds the request.
pub fn deadline_after(from: Instant, timeout: Duration) -> Option<Instant> {
    from.checked_add(timeout)
}

/// The sooner of two optional deadlines.
pub fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn task_error(index: usize, error: TaskError) -> InferError {
    match error {
        TaskError::Image(source) => InferError::Image { index, source },
        TaskError::DeadlineExceeded => InferError::DeadlineExceeded,
        TaskError::Engine(EngineError::Cancelled) => InferError::Cancelled,
        other => InferError::Internal(format!("input 'image'[{index}]: {other}")),
    }
}
