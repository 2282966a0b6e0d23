//! The engine pool: N worker threads, each owning its Tesseract engines, fed by one bounded
//! queue.
//!
//! Tesseract is blocking, CPU-bound and not thread-safe per instance, so each engine lives on
//! one OS thread and never moves. Admission is all-or-nothing per batch: a request's images are
//! either all queued or the request is refused at once, so a full queue never strands half a
//! batch and never makes a caller wait unboundedly.

use std::{
    collections::BTreeMap,
    num::NonZeroUsize,
    panic::{catch_unwind, AssertUnwindSafe},
    path::PathBuf,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex, PoisonError,
    },
    thread,
    time::{Duration, Instant},
};

use crossbeam_channel::{select, Receiver, Sender};
use tokio::sync::{oneshot, watch};

use super::{
    document::{DocumentLimits, Dpi, RenderedPage},
    engine::{Engine, EngineError, OcrResult, PagePlace, PageReport},
    image::{ImageError, ImageInput, ImageLimits, Pixels},
    orientation::{self, Orientation},
    split::{self, Split},
    Lang, Languages, OcrOptions, OutputSet, Rotate,
};

#[derive(Clone, Debug)]
pub struct PoolConfig {
    pub workers: NonZeroUsize,
    /// Images that may wait for an engine, across all requests.
    pub queue_capacity: NonZeroUsize,
    /// Engines (one per language specification) a worker keeps before evicting the least
    /// recently used one.
    pub engines_per_worker: NonZeroUsize,
    pub tessdata: PathBuf,
    /// What `tessdata` holds; requests may ask only for these.
    pub languages: Languages,
    /// Preloaded on every worker; the pool is ready when all have it.
    pub default_lang: Lang,
    pub limits: ImageLimits,
    /// What a document must meet before any page is rendered.
    pub documents: DocumentLimits,
    /// The highest `render_dpi` a request may ask for.
    pub max_render_dpi: Dpi,
    /// Recognise big pages in strips on idle engines at once.
    pub split_pages: bool,
    /// The orientation detector's language (`osd`), when installed: `rotate=auto` needs it.
    pub osd: Option<Lang>,
    /// The orientation confidence at which `rotate=auto` turns a page.
    pub rotate_threshold: f32,
}

/// One picture to recognise: the unit the queue holds and an engine takes. (Not a "job": that
/// word names work a client submits and collects later.)
#[derive(Debug)]
pub struct Task {
    pub input: Input,
    pub options: Arc<OcrOptions>,
    pub outputs: OutputSet,
    /// Past this instant the task is dropped if still queued, and cancelled inside Tesseract if
    /// running.
    pub deadline: Option<Instant>,
    /// The trace span of this image; queue wait, decoding and recognition are its children.
    pub span: tracing::Span,
}

/// What a task brings to its engine.
#[derive(Debug)]
pub enum Input {
    /// A single image, still encoded: the engine's worker decodes it (it is fast next to
    /// recognition, and the queue then holds compressed files, not pixels).
    Image(ImageInput),
    /// A document page rendered ahead of time, off the engines: they only ever wait for
    /// pixels that are ready.
    Page {
        page: RenderedPage,
        rendered_in: Duration,
        /// More pages of the same document come after this one. Such a page is never split:
        /// the document's next pages keep the idle engines busy, and splitting would only add
        /// work. The last page may be, so a one-page scan is as fast as an image.
        more_follow: bool,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error("deadline exceeded")]
    DeadlineExceeded,
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("recognition panicked")]
    Panicked,
}

/// The queue cannot take the whole batch now.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("the queue is full ({queued} of {capacity} images waiting; this request has {requested})")]
pub struct QueueFull {
    pub queued: usize,
    pub capacity: usize,
    pub requested: usize,
}

#[derive(Debug, thiserror::Error)]
#[error("engines failed to load: {0}")]
pub struct PoolError(String);

#[derive(Clone, Debug, PartialEq, Eq)]
enum State {
    Loading,
    Ready,
    Failed(String),
}

pub type Reply = Result<OcrResult, TaskError>;

struct Envelope {
    task: Task,
    enqueued: Instant,
    /// Open while the task waits; closed when a worker takes it.
    queue_span: tracing::Span,
    reply: oneshot::Sender<Reply>,
}

pub struct EnginePool {
    queue: Sender<Envelope>,
    counters: Arc<Counters>,
    capacity: usize,
    workers: usize,
    state: watch::Receiver<State>,
    languages: Languages,
    default_lang: Lang,
    limits: ImageLimits,
    documents: DocumentLimits,
    max_render_dpi: Dpi,
}

/// Shared between the pool handle and its workers.
#[derive(Default)]
struct Counters {
    queued: AtomicUsize,
    /// Tasks ever queued and ever taken by a worker: a scraped queue depth misses spikes, these
    /// do not.
    pushed: AtomicUsize,
    popped: AtomicUsize,
    busy: AtomicUsize,
    loaded: AtomicUsize,
    abandoned: AtomicUsize,
    expired: AtomicUsize,
    cancelled: AtomicUsize,
    /// Pages recognised in strips on several engines.
    split: AtomicUsize,
    /// Engines alive, by language specification, across workers.
    engines: Mutex<BTreeMap<String, usize>>,
}

impl Counters {
    fn engines_changed(&self, lang: &Lang, delta: isize) {
        let mut engines = self.engines.lock().unwrap_or_else(PoisonError::into_inner);
        let count = engines.entry(lang.as_str().to_owned()).or_default();
        *count = count.saturating_add_signed(delta);
    }
}

/// Tasks that never produced a result, by reason. Monotonic.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Dropped {
    /// The caller had gone before an engine was free: Tesseract never ran.
    pub abandoned: usize,
    /// The deadline had passed before an engine was free: Tesseract never ran.
    pub expired: usize,
    /// Stopped inside Tesseract (deadline passed or caller gone while recognising).
    pub cancelled: usize,
}

impl EnginePool {
    /// Spawns the workers and returns at once; they load the default language in the
    /// background ([`EnginePool::wait_ready`]).
    pub fn start(config: PoolConfig) -> Result<EnginePool, PoolError> {
        if std::env::var("OMP_THREAD_LIMIT").as_deref() != Ok("1") {
            tracing::warn!(
                "OMP_THREAD_LIMIT is not 1: Tesseract's OpenMP threads will compete with the \
                 pool's workers and recognition will slow down"
            );
        }
        let (queue, tasks) = crossbeam_channel::unbounded();
        // Strips offered to idle workers; not counted as queued images.
        let (help, helping) = crossbeam_channel::unbounded();
        let counters = Arc::new(Counters::default());
        let (state_tx, state) = watch::channel(State::Loading);
        let state_tx = Arc::new(state_tx);
        for index in 0..config.workers.get() {
            let worker = Worker {
                config: config.clone(),
                tasks: tasks.clone(),
                help: help.clone(),
                helping: helping.clone(),
                counters: counters.clone(),
                state: state_tx.clone(),
                engines: Vec::new(),
                osd: None,
            };
            thread::Builder::new()
                .name(format!("tesserve-engine-{index}"))
                .spawn(move || worker.run())
                .map_err(|e| PoolError(format!("cannot spawn worker thread: {e}")))?;
        }
        Ok(EnginePool {
            queue,
            counters,
            capacity: config.queue_capacity.get(),
            workers: config.workers.get(),
            state,
            languages: config.languages,
            default_lang: config.default_lang,
            limits: config.limits,
            documents: config.documents,
            max_render_dpi: config.max_render_dpi,
        })
    }

    /// Waits until every worker has loaded the default language.
    pub async fn wait_ready(&self) -> Result<(), PoolError> {
        let mut state = self.state.clone();
        let state = state
            .wait_for(|s| *s != State::Loading)
            .await
            .map_err(|_| PoolError("workers exited while loading".into()))?;
        match &*state {
            State::Failed(reason) => Err(PoolError(reason.clone())),
            _ => Ok(()),
        }
    }

    pub fn is_ready(&self) -> bool {
        *self.state.borrow() == State::Ready
    }

    /// Queues a batch, all or nothing. Each receiver yields the result of the task at the same
    /// index.
    pub fn submit(&self, tasks: Vec<Task>) -> Result<Vec<oneshot::Receiver<Reply>>, QueueFull> {
        let requested = tasks.len();
        self.counters
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |queued| {
                (queued + requested <= self.capacity).then_some(queued + requested)
            })
            .map_err(|queued| QueueFull {
                queued,
                capacity: self.capacity,
                requested,
            })?;
        self.counters.pushed.fetch_add(requested, Ordering::Relaxed);
        let enqueued = Instant::now();
        let receivers = tasks
            .into_iter()
            .map(|task| {
                let (reply, receiver) = oneshot::channel();
                let envelope = Envelope {
                    queue_span: tracing::info_span!(parent: &task.span, "queue_wait"),
                    task,
                    enqueued,
                    reply,
                };
                if let Err(returned) = self.queue.send(envelope) {
                    // Workers are gone; the receiver below sees the sender dropped.
                    self.counters.queued.fetch_sub(1, Ordering::AcqRel);
                    drop(returned);
                }
                receiver
            })
            .collect();
        Ok(receivers)
    }

    /// Queues one more page of a document whose request was admitted by [`EnginePool::submit`]:
    /// it is counted as queued but never refused, so a document is not cut off half way. A
    /// document holds at most a few pages in the pool at once, so this stays bounded.
    pub fn submit_more(&self, task: Task) -> oneshot::Receiver<Reply> {
        self.counters.queued.fetch_add(1, Ordering::AcqRel);
        self.counters.pushed.fetch_add(1, Ordering::Relaxed);
        let (reply, receiver) = oneshot::channel();
        let envelope = Envelope {
            queue_span: tracing::info_span!(parent: &task.span, "queue_wait"),
            task,
            enqueued: Instant::now(),
            reply,
        };
        if self.queue.send(envelope).is_err() {
            self.counters.queued.fetch_sub(1, Ordering::AcqRel);
        }
        receiver
    }

    pub fn languages(&self) -> &Languages {
        &self.languages
    }

    pub fn default_lang(&self) -> &Lang {
        &self.default_lang
    }

    pub fn limits(&self) -> &ImageLimits {
        &self.limits
    }

    pub fn document_limits(&self) -> &DocumentLimits {
        &self.documents
    }

    pub fn max_render_dpi(&self) -> Dpi {
        self.max_render_dpi
    }

    pub fn workers(&self) -> usize {
        self.workers
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Images waiting for an engine.
    pub fn queued(&self) -> usize {
        self.counters.queued.load(Ordering::Acquire)
    }

    /// Workers running Tesseract right now.
    pub fn busy(&self) -> usize {
        self.counters.busy.load(Ordering::Acquire)
    }

    /// Tasks ever queued and ever taken from the queue.
    pub fn pushed_popped(&self) -> (usize, usize) {
        let load = |counter: &AtomicUsize| counter.load(Ordering::Relaxed);
        (load(&self.counters.pushed), load(&self.counters.popped))
    }

    /// Engines alive per language specification, across workers.
    pub fn engines_loaded(&self) -> BTreeMap<String, usize> {
        let engines = self.counters.engines.lock();
        engines.unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Pages recognised in strips on several engines at once.
    pub fn pages_split(&self) -> usize {
        self.counters.split.load(Ordering::Relaxed)
    }

    pub fn dropped(&self) -> Dropped {
        let load = |counter: &AtomicUsize| counter.load(Ordering::Relaxed);
        Dropped {
            abandoned: load(&self.counters.abandoned),
            expired: load(&self.counters.expired),
            cancelled: load(&self.counters.cancelled),
        }
    }
}

struct Worker {
    config: PoolConfig,
    tasks: Receiver<Envelope>,
    /// Pages being split, for idle workers to take strips of.
    help: Sender<Arc<Split>>,
    helping: Receiver<Arc<Split>>,
    counters: Arc<Counters>,
    state: Arc<watch::Sender<State>>,
    /// Most recently used first.
    engines: Vec<Engine>,
    /// The orientation detector, loaded on first use and kept apart from `engines`, so that
    /// `rotate=auto` never evicts a recognition engine.
    osd: Option<Engine>,
}

impl Worker {
    fn run(mut self) {
        match Engine::new(&self.config.tessdata, &self.config.default_lang) {
            Ok(engine) => {
                self.counters.engines_changed(engine.lang(), 1);
                self.engines.push(engine);
                let loaded = self.counters.loaded.fetch_add(1, Ordering::AcqRel) + 1;
                if loaded == self.config.workers.get() {
                    self.state.send_replace(State::Ready);
                }
            }
            Err(error) => {
                self.state.send_replace(State::Failed(error.to_string()));
                return;
            }
        }
        // A task's own panics are caught in `serve`; should anything else panic, the worker
        // carries on with fresh engines instead of leaving the pool one thread short.
        while catch_unwind(AssertUnwindSafe(|| self.take_tasks())).is_err() {
            self.reset_engines();
            tracing::error!("engine worker panicked; it goes on with fresh engines");
        }
    }

    /// Serves tasks, and strips of other workers' pages, until the pool (the only sender of
    /// tasks) is dropped and the queue is drained.
    fn take_tasks(&mut self) {
        loop {
            select! {
                recv(self.tasks) -> envelope => match envelope {
                    Ok(envelope) => {
                        self.counters.queued.fetch_sub(1, Ordering::AcqRel);
                        self.counters.popped.fetch_add(1, Ordering::Relaxed);
                        self.serve(envelope);
                    }
                    Err(_) => return,
                },
                recv(self.helping) -> split => {
                    if let Ok(split) = split {
                        self.counters.busy.fetch_add(1, Ordering::AcqRel);
                        self.take_strips(&split, &|| false);
                        self.counters.busy.fetch_sub(1, Ordering::AcqRel);
                    }
                }
            }
        }
    }

    /// Recognises strips of `split` until none is left; `stop` is the caller's own reason to
    /// give up, besides the split's.
    fn take_strips(&mut self, split: &Split, stop: &dyn Fn() -> bool) {
        while let Some((index, strip)) = split.take() {
            let cancel = || split.cancelled() || stop();
            let outcome =
                catch_unwind(AssertUnwindSafe(|| {
                    let engine = self.engine(&split.options.lang)?;
                    Ok(engine.recognize(
                        &strip,
                        split.place,
                        &split.options,
                        split.outputs,
                        &cancel,
                    )?)
                }));
            let result = outcome.unwrap_or_else(|_| {
                self.reset_engines();
                Err(TaskError::Panicked)
            });
            split.finish(index, result);
        }
    }

    /// Strips of `pixels` for this worker and the idle ones, if the page is worth splitting
    /// and engines are idle now (never under load: then splitting would only add work).
    fn plan_split(
        &self,
        options: &OcrOptions,
        outputs: OutputSet,
        pixels: &Pixels,
    ) -> Option<Vec<Pixels>> {
        if !self.config.split_pages || !split::allowed(options, outputs, pixels) {
            return None;
        }
        let busy = self.counters.busy.load(Ordering::Acquire);
        let idle = self.config.workers.get().saturating_sub(busy);
        if idle == 0 || self.counters.queued.load(Ordering::Acquire) > 0 {
            return None;
        }
        // One strip per engine: the strips hold equal ink, and every strip costs Tesseract
        // some fixed work, so more of them only add time.
        let strips = split::plan(pixels, 1 + idle);
        (strips.len() > 1).then(|| strips.into_iter().map(|rows| pixels.rows(rows)).collect())
    }

    /// Drops every engine: after a panic they may be mid-page in an unknown state.
    fn reset_engines(&mut self) {
        for engine in self.engines.drain(..).chain(self.osd.take()) {
            self.counters.engines_changed(engine.lang(), -1);
        }
    }

    fn serve(&mut self, envelope: Envelope) {
        let Envelope {
            task,
            enqueued,
            queue_span,
            reply,
        } = envelope;
        drop(queue_span);
        let queue_time = enqueued.elapsed();
        // Nobody is waiting for this answer any more: skip Tesseract entirely.
        if reply.is_closed() {
            self.counters.abandoned.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let deadline = task.deadline;
        let expired = || deadline.is_some_and(|d| Instant::now() >= d);
        if expired() {
            self.counters.expired.fetch_add(1, Ordering::Relaxed);
            let _ = reply.send(Err(TaskError::DeadlineExceeded));
            return;
        }
        let cancel = || expired() || reply.is_closed();

        self.counters.busy.fetch_add(1, Ordering::AcqRel);
        let outcome = catch_unwind(AssertUnwindSafe(|| self.recognize(task, &cancel)));
        self.counters.busy.fetch_sub(1, Ordering::AcqRel);
        if let Ok(Err(TaskError::Engine(EngineError::Cancelled))) = outcome {
            self.counters.cancelled.fetch_add(1, Ordering::Relaxed);
        }
        let result = match outcome {
            Ok(Err(TaskError::Engine(EngineError::Cancelled))) if expired() => {
                Err(TaskError::DeadlineExceeded)
            }
            Ok(result) => result.map(|mut result| {
                result.timings.queue = queue_time;
                for report in &mut result.pages {
                    report.timings = result.timings.into();
                }
                result
            }),
            Err(_) => {
                self.reset_engines();
                tracing::error!("recognition panicked; the worker's engines were reset");
                Err(TaskError::Panicked)
            }
        };
        let _ = reply.send(result);
    }

    fn recognize(&mut self, task: Task, cancel: &dyn Fn() -> bool) -> Result<OcrResult, TaskError> {
        let started = Instant::now();
        let limits = self.config.limits;
        let splittable = !matches!(
            task.input,
            Input::Page {
                more_follow: true,
                ..
            }
        );
        let (mut pixels, place, decode_time) = match task.input {
            Input::Image(image) => {
                let pixels = tracing::info_span!(parent: &task.span, "decode")
                    .in_scope(|| image.decode(&limits))?;
                let place = PagePlace {
                    index: 0,
                    dpi: task.options.dpi,
                };
                (pixels, place, started.elapsed())
            }
            Input::Page {
                page, rendered_in, ..
            } => {
                // A page's own resolution (the render dpi, a TIFF's tags) is the fact; `dpi`
                // stands in where a page does not say.
                let place = PagePlace {
                    index: u32::try_from(page.index.get()).unwrap_or(u32::MAX),
                    dpi: page.dpi.map(|dpi| dpi.get()).or(task.options.dpi),
                };
                (page.pixels, place, rendered_in)
            }
        };
        let span = tracing::info_span!(
            parent: &task.span,
            "recognize",
            lang = task.options.lang.as_str(),
            width = i64::from(pixels.width()),
            height = i64::from(pixels.height()),
        );
        let _entered = span.enter();
        let recognising = Instant::now();
        let orientation = match task.options.rotate {
            Rotate::Off => None,
            Rotate::Auto => {
                let orientation = self.orientation(&pixels, place.dpi)?;
                if orientation.applied {
                    if let Some(turned) = orientation::rotate(&pixels, orientation.angle) {
                        pixels = turned;
                    }
                }
                Some(orientation)
            }
        };
        let strips = splittable
            .then(|| self.plan_split(&task.options, task.outputs, &pixels))
            .flatten();
        let mut result = match strips {
            Some(strips) => {
                let split = Arc::new(Split::new(
                    strips,
                    task.options.clone(),
                    task.outputs,
                    place,
                    task.deadline,
                ));
                for _ in 1..split.len() {
                    let _ = self.help.send(split.clone());
                }
                self.counters.split.fetch_add(1, Ordering::Relaxed);
                self.take_strips(&split, cancel);
                split.join(cancel)?
            }
            None => {
                let engine = self.engine(&task.options.lang)?;
                engine.recognize(&pixels, place, &task.options, task.outputs, cancel)?
            }
        };
        result.timings.recognize = recognising.elapsed();
        result.timings.decode = decode_time;
        result.pixels = u64::from(pixels.width()) * u64::from(pixels.height());
        result.pages = vec![PageReport {
            index: place.index,
            page: place.index.saturating_add(1),
            width: pixels.width(),
            height: pixels.height(),
            dpi: place.dpi,
            orientation,
            ..PageReport::default()
        }];
        Ok(result)
    }

    /// Detects which way up `pixels` is, on the worker's own orientation engine.
    fn orientation(&mut self, pixels: &Pixels, dpi: Option<u32>) -> Result<Orientation, TaskError> {
        let threshold = self.config.rotate_threshold;
        let Some(lang) = &self.config.osd else {
            return Ok(Orientation::from_detected(None, threshold));
        };
        if self.osd.is_none() {
            let engine = Engine::new(&self.config.tessdata, lang)?;
            self.counters.engines_changed(engine.lang(), 1);
            self.osd = Some(engine);
        }
        let detected = match &mut self.osd {
            Some(engine) => engine.detect_orientation(pixels, dpi)?,
            None => None,
        };
        Ok(Orientation::from_detected(detected, threshold))
    }

    /// The engine for `lang`, created on first use and kept, most recently used first.
    fn engine(&mut self, lang: &Lang) -> Result<&mut Engine, EngineError> {
        match self.engines.iter().position(|e| e.lang() == lang) {
            Some(index) => self.engines[..=index].rotate_right(1),
            None => {
                let engine = Engine::new(&self.config.tessdata, lang)?;
                let keep = self.config.engines_per_worker.get() - 1;
                for evicted in self.engines.drain(keep.min(self.engines.len())..) {
                    self.counters.engines_changed(evicted.lang(), -1);
                }
                self.counters.engines_changed(engine.lang(), 1);
                self.engines.insert(0, engine);
            }
        }
        Ok(&mut self.engines[0])
    }
}
