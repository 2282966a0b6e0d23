//! The yardstick: raw Tesseract through tesseract-rs, one engine per thread, looping over
//! already-decoded images. No server, no decoding, no protocol: what the machine can do.

use std::{
    path::Path,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Barrier,
    },
    time::{Duration, Instant},
};

use tesseract_rs::{TessPageSegMode, TesseractAPI};

use super::{images::Sample, report::Latency};

#[derive(Debug, thiserror::Error)]
pub enum CeilingError {
    #[error("image {name}: {reason}")]
    Decode { name: String, reason: String },
    #[error("Tesseract: {0}")]
    Tesseract(String),
}

/// What `threads` engines did in `duration`.
#[derive(Clone, Debug)]
pub struct Ceiling {
    pub threads: usize,
    pub images: usize,
    pub elapsed: Duration,
    /// Images per second.
    pub throughput: f64,
    /// Per image.
    pub latency: Latency,
}

struct Decoded {
    gray: Vec<u8>,
    width: i32,
    height: i32,
}

fn decode(sample: &Sample) -> Result<Decoded, CeilingError> {
    let image = image::load_from_memory(&sample.image).map_err(|e| CeilingError::Decode {
        name: sample.name.clone(),
        reason: e.to_string(),
    })?;
    let gray = image.to_luma8();
    Ok(Decoded {
        width: gray.width() as i32,
        height: gray.height() as i32,
        gray: gray.into_raw(),
    })
}

/// When the engines of a measurement stop.
#[derive(Clone, Copy, Debug)]
enum Until {
    /// Once this much time has passed (after at least one image each).
    Elapsed(Duration),
    /// Once every image has been read exactly once: pages of a document.
    EachOnce,
}

/// Runs `threads` engines over `samples` for `duration`, taking the images in turn from one
/// shared sequence, as the load generator sends them.
pub fn measure(
    samples: &[Sample],
    tessdata: &Path,
    threads: usize,
    duration: Duration,
) -> Result<Ceiling, CeilingError> {
    run(samples, tessdata, threads, Until::Elapsed(duration))
}

/// Runs `threads` engines over `samples`, each read once, as a server reads the pages of
/// one document: the elapsed time is the document's.
pub fn read_each_once(
    samples: &[Sample],
    tessdata: &Path,
    threads: usize,
) -> Result<Ceiling, CeilingError> {
    run(samples, tessdata, threads, Until::EachOnce)
}

fn run(
    samples: &[Sample],
    tessdata: &Path,
    threads: usize,
    until: Until,
) -> Result<Ceiling, CeilingError> {
    let decoded = samples.iter().map(decode).collect::<Result<Vec<_>, _>>()?;
    let next = AtomicUsize::new(0);
    // Engines load before the clock starts: the server's load before it reports ready.
    let loaded = Barrier::new(threads + 1);
    let (per_thread, started) = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| scope.spawn(|| engine_loop(&decoded, tessdata, &next, &loaded, until)))
            .collect();
        loaded.wait();
        let started = Instant::now();
        let per_thread = workers
            .into_iter()
            .map(|worker| {
                worker
                    .join()
                    .unwrap_or_else(|_| Err(CeilingError::Tesseract("a thread panicked".into())))
            })
            .collect::<Result<Vec<_>, _>>();
        (per_thread, started)
    });
    let per_thread = per_thread?;
    let elapsed = started.elapsed();
    let latencies: Vec<Duration> = per_thread.into_iter().flatten().collect();
    Ok(Ceiling {
        threads,
        images: latencies.len(),
        elapsed,
        throughput: latencies.len() as f64 / elapsed.as_secs_f64(),
        latency: Latency::of(latencies),
    })
}

/// One engine, set up as the server sets up its own, so both do the same work: automatic
/// page segmentation.
fn engine(tessdata: &Path) -> Result<TesseractAPI, CeilingError> {
    let api = TesseractAPI::new();
    api.init(tessdata, "eng")
        .and_then(|()| api.set_variable("debug_file", "/dev/null"))
        .and_then(|()| api.set_page_seg_mode(TessPageSegMode::PSM_AUTO))
        .map_err(|_| CeilingError::Tesseract("load eng".into()))?;
    Ok(api)
}

/// Recognises `image` once; how long that took.
fn read(api: &TesseractAPI, image: &Decoded) -> Result<Duration, CeilingError> {
    let fail = |what: &str| CeilingError::Tesseract(what.to_owned());
    let started = Instant::now();
    api.set_image(&image.gray, image.width, image.height, 1, image.width)
        .map_err(|_| fail("set the image"))?;
    api.get_utf8_text().map_err(|_| fail("recognise"))?;
    let took = started.elapsed();
    let _ = api.clear();
    Ok(took)
}

/// One engine taking the next image of the set until `until`; the time of each.
fn engine_loop(
    set: &[Decoded],
    tessdata: &Path,
    next: &AtomicUsize,
    loaded: &Barrier,
    until: Until,
) -> Result<Vec<Duration>, CeilingError> {
    let api = engine(tessdata);
    // Every thread reaches the barrier, loaded or not, so none waits forever.
    loaded.wait();
    let api = api?;
    let started = Instant::now();
    let mut latencies = Vec::new();
    loop {
        let taken = next.fetch_add(1, Ordering::Relaxed);
        match until {
            Until::EachOnce if taken >= set.len() => return Ok(latencies),
            _ => latencies.push(read(&api, &set[taken % set.len()])?),
        }
        if let Until::Elapsed(duration) = until {
            if started.elapsed() >= duration {
                return Ok(latencies);
            }
        }
    }
}

/// One engine reading `sample` `times` times, after one read to warm it up (as a server has
/// read something before it is measured); the spread of those times.
pub fn repeat(sample: &Sample, tessdata: &Path, times: usize) -> Result<Latency, CeilingError> {
    let image = decode(sample)?;
    let api = engine(tessdata)?;
    read(&api, &image)?;
    let latencies = (0..times)
        .map(|_| read(&api, &image))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Latency::of(latencies))
}
