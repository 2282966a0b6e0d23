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
pub use self::params::{OptionsBuilder, ParamValue};
pub use self::stats::{DurationTotal, Stats, StatsSnapshot};

use ::metrics::{counter, gauge, histogram};
use tracing::Instrument;

use crate::{
    ocr::{
        EngineError, EnginePool, ImageInput, OcrOptions, OcrResult, OutputKind, OutputSet, Task,
        TaskError,
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
        OptionsBuilder::new(self.pool.languages(), self.default_options())
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
        // Header-only checks: an oversized or undecodable image is refused before it queues.
        let limits = self.pool.limits();
        for (index, image) in request.images.iter().enumerate() {
            image
                .inspect(limits)
                .map_err(|source| InferError::Image { index, source })?;
        }
        let cap = self
            .admission
            .request_timeout
            .and_then(|t| deadline_after(Instant::now(), t));
        let deadline = earliest(request.deadline, cap);
        if deadline.is_some_and(|d| d <= Instant::now()) {
            return Err(InferError::DeadlineExceeded);
        }

        let options = Arc::new(request.options);
        let outputs: OutputSet = request.outputs.iter().copied().collect();
        let keys: Vec<Option<Key>> = request
            .images
            .iter()
            .map(|image| {
                self.cache
                    .as_ref()
                    .map(|_| Key::new(image, &options, outputs))
            })
            .collect();
        let mut results: Vec<Option<OcrResult>> = keys
            .iter()
            .map(|key| {
                let mut result = self.cache.as_ref()?.get(key.as_ref()?)?;
                result.cached = true;
                result.timings = Default::default();
                Some(result)
            })
            .collect();
        let mut pending = Vec::new();
        let tasks: Vec<Task> = request
            .images
            .into_iter()
            .enumerate()
            .filter(|(index, _)| results[*index].is_none())
            .map(|(index, image)| {
                pending.push(index);
                histogram!(metrics::IMAGE_BYTES).record(image.len() as f64);
                Task {
                    // Span numbers as i64: OpenTelemetry has no unsigned integers.
                    span: tracing::info_span!(
                        "image",
                        batch_index = index as i64,
                        bytes = image.len() as i64
                    ),
                    image,
                    options: options.clone(),
                    outputs,
                    deadline,
                }
            })
            .collect();
        let receivers = match tasks.is_empty() {
            true => Vec::new(),
            false => self.pool.submit(tasks)?,
        };

        // Dropping the receivers (on an error or at the deadline) cancels the images still
        // queued or running.
        let collect = async {
            for (&index, receiver) in pending.iter().zip(receivers) {
                let reply = receiver
                    .await
                    .map_err(|_| InferError::Internal("an engine worker exited".into()))?;
                let result = reply.map_err(|error| task_error(index, error))?;
                if let (Some(cache), Some(key)) = (&self.cache, &keys[index]) {
                    cache.insert(*key, &result);
                }
                results[index] = Some(result);
            }
            Ok::<_, InferError>(())
        };
        match deadline {
            Some(deadline) => tokio::time::timeout_at(deadline.into(), collect)
                .await
                .map_err(|_| InferError::DeadlineExceeded)??,
            None => collect.await?,
        };
        let results = results
            .into_iter()
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| InferError::Internal("an image got no result".into()))?;
        Ok(InferResponse {
            id: request.id,
            outputs: request.outputs,
            results,
        })
    }
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
