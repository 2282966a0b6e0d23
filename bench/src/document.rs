//! The document figure: a scanned PDF read by the server in one request, against raw
//! Tesseract on the same pages already rendered (as many engines as the server has), and
//! against `ocrmypdf --jobs N`, the tool users would pick instead, in the same run.

use std::{path::Path, process::Command, time::Instant};

use base64::{engine::general_purpose::STANDARD, Engine};
use bytes::Bytes;
use image::{GrayImage, ImageFormat};
use tesserve::ocr::{Document, DocumentLimits, Dpi};
use tesserve_load::{
    ceiling,
    images::{self, Sample},
    pdf::{scan_pdf, Encoding},
    render::{encode, Renderer},
};

use crate::{server::Server, Error, Spread};

/// The resolution the pages are rendered back at: the one [`scan_pdf`] places them at.
const DPI: u32 = 300;

#[derive(Debug)]
pub struct DocumentFigures {
    pub pages: usize,
    pub engines: usize,
    pub pdf_bytes: usize,
    /// One request for the document's text and page reports, until its answer is in.
    pub server_s: Spread,
    /// Raw Tesseract reading the pre-rendered pages once each on `engines` threads.
    pub raw_s: Spread,
    /// Each run's server pages/s over the same run's raw pages/s.
    pub of_ceiling: Spread,
    /// The server's own recognition times of the pages, summed, over the engines: the
    /// completion time a perfect schedule would reach.
    pub ideal_s: Spread,
    pub of_ideal: Spread,
    /// The server's rendering times of the pages, summed: CPU the raw engines never spend.
    pub render_s: Spread,
    /// One request that also asks for the searchable PDF: what `ocrmypdf` makes.
    pub searchable_s: Spread,
    /// `ocrmypdf --jobs engines --output-type pdf`, or why it was not measured.
    pub ocrmypdf: Result<Spread, String>,
    /// Each run's ocrmypdf time over the same run's searchable-PDF request.
    pub ocrmypdf_ratio: Spread,
    /// Mean character error rate of the server's page texts against the drawn text.
    pub cer: f64,
}

/// Measures `pages` A4 pages of text, scanned into one PDF, `runs` times each way.
pub fn measure(
    bin: &Path,
    renderer: &Renderer,
    tessdata: &Path,
    engines: usize,
    pages: usize,
    runs: usize,
) -> Result<DocumentFigures, Error> {
    let scans = (0..pages as u64)
        .map(|seed| images::a4_page(renderer, 100 + seed))
        .collect::<Result<Vec<_>, _>>()?;
    let gray = scans
        .iter()
        .map(|scan| Ok(image::load_from_memory(&scan.image)?.to_luma8()))
        .collect::<Result<Vec<_>, Error>>()?;
    let pdf = scan_pdf(&gray, Encoding::Flate, None);
    let rendered = prerender(&pdf)?;
    let dir = std::env::temp_dir().join(format!("tesserve-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let (input, output) = (dir.join("scan.pdf"), dir.join("ocrmypdf.pdf"));
    std::fs::write(&input, &pdf)?;

    let mut figures = DocumentFigures {
        pages,
        engines,
        pdf_bytes: pdf.len(),
        server_s: Spread::default(),
        raw_s: Spread::default(),
        of_ceiling: Spread::default(),
        ideal_s: Spread::default(),
        of_ideal: Spread::default(),
        render_s: Spread::default(),
        searchable_s: Spread::default(),
        ocrmypdf: Ok(Spread::default()),
        ocrmypdf_ratio: Spread::default(),
        cer: f64::NAN,
    };
    let server = Server::start(bin, engines, &[])?;
    // Warm-up: the engines have read a page before they are timed, as the ceiling's have.
    read(&server, &pdf, "1-2", false)?;
    for run in 0..runs {
        let raw = ceiling::read_each_once(&rendered, tessdata, engines)?;
        let raw_s = raw.elapsed.as_secs_f64();
        let (answer, server_s) = timed(|| read(&server, &pdf, "", false))?;
        let summed = |timing: &str| -> f64 {
            let ms: f64 = answer
                .pages
                .iter()
                .filter_map(|page| page["timings"][timing].as_f64())
                .sum();
            ms / 1e3
        };
        let ideal_s = summed("recognize_ms") / engines as f64;
        figures.server_s.push(server_s);
        figures.raw_s.push(raw_s);
        figures.of_ceiling.push(raw_s / server_s);
        figures.ideal_s.push(ideal_s);
        figures.of_ideal.push(server_s / ideal_s);
        figures.render_s.push(summed("render_ms"));
        if run == 0 {
            figures.cer = cer(&answer.text, &scans);
        }
        let (_, searchable_s) = timed(|| read(&server, &pdf, "", true))?;
        figures.searchable_s.push(searchable_s);
        let ocrmypdf = time_ocrmypdf(&input, &output, engines);
        eprintln!(
            "document run {run}: server {server_s:.1} s, raw {raw_s:.1} s, ideal {ideal_s:.1} s, \
             with the pdf {searchable_s:.1} s, ocrmypdf {ocrmypdf:?}"
        );
        match (&mut figures.ocrmypdf, ocrmypdf) {
            (Ok(spread), Ok(seconds)) => {
                spread.push(seconds);
                figures.ocrmypdf_ratio.push(seconds / searchable_s);
            }
            (figure, Err(why)) => *figure = Err(why),
            (Err(_), Ok(_)) => {}
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(figures)
}

fn timed<T>(f: impl FnOnce() -> Result<T, Error>) -> Result<(T, f64), Error> {
    let started = Instant::now();
    let value = f()?;
    Ok((value, started.elapsed().as_secs_f64()))
}

/// What the server answered for a whole document.
struct Answer {
    text: String,
    /// The `pages` output: one report per page read.
    pages: Vec<serde_json::Value>,
}

/// Reads `pages` of `pdf` (all when empty) in one OIP REST v2 request for its text and page
/// reports, and with `searchable` its searchable PDF too.
fn read(server: &Server, pdf: &[u8], pages: &str, searchable: bool) -> Result<Answer, Error> {
    let mut outputs = vec![
        serde_json::json!({"name": "text"}),
        serde_json::json!({"name": "pages"}),
    ];
    if searchable {
        outputs.push(serde_json::json!({"name": "pdf"}));
    }
    let parameters = match pages {
        "" => serde_json::json!({}),
        pages => serde_json::json!({ "pages": pages }),
    };
    let body = serde_json::json!({
        "inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                    "data": [{"b64": STANDARD.encode(pdf)}]}],
        "outputs": outputs,
        "parameters": parameters,
    });
    let reply = server.infer(&body)?;
    let output = |name: &str| {
        reply["outputs"]
            .as_array()
            .and_then(|outputs| outputs.iter().find(|o| o["name"] == name))
            .and_then(|o| o["data"].get(0))
            .cloned()
            .ok_or_else(|| format!("no {name} output in the server's answer"))
    };
    if searchable && output("pdf")?["b64"].as_str().is_none_or(str::is_empty) {
        return Err("the server's pdf output is empty".into());
    }
    Ok(Answer {
        text: output("text")?.as_str().unwrap_or_default().to_owned(),
        pages: serde_json::from_str(output("pages")?.as_str().unwrap_or_default())?,
    })
}

/// The pages as the server's renderer makes them, for raw Tesseract to read.
fn prerender(pdf: &[u8]) -> Result<Vec<Sample>, Error> {
    let limits = DocumentLimits {
        max_bytes: usize::MAX,
        max_pages: 1000,
        max_page_pixels: u64::MAX,
    };
    let document = Document::open(Bytes::copy_from_slice(pdf), &limits)?;
    let dpi = Dpi::new(DPI)?;
    document
        .page_indexes()
        .into_iter()
        .map(|index| {
            let page = document.render(index, dpi)?;
            let gray = GrayImage::from_raw(
                page.pixels.width(),
                page.pixels.height(),
                page.pixels.data().to_vec(),
            )
            .ok_or("a rendered page is gray")?;
            Ok(Sample {
                name: format!("page-{}", index.number()),
                image: Bytes::from(encode(gray, ImageFormat::Png)?),
                text: String::new(),
            })
        })
        .collect()
}

fn time_ocrmypdf(input: &Path, output: &Path, jobs: usize) -> Result<f64, String> {
    let started = Instant::now();
    let result = Command::new("ocrmypdf")
        .args([
            "--quiet",
            "--jobs",
            &jobs.to_string(),
            "--output-type",
            "pdf",
        ])
        .arg(input)
        .arg(output)
        .output();
    let elapsed = started.elapsed();
    match result {
        Ok(out) if out.status.success() => Ok(elapsed.as_secs_f64()),
        Ok(out) => Err(format!(
            "ocrmypdf failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => Err(format!("ocrmypdf not run ({e}); `make bench` installs it")),
    }
}

/// The mean character error rate of each page's text (split at form feeds) against its scan.
fn cer(text: &str, scans: &[Sample]) -> f64 {
    let pages: Vec<&str> = text.split('\u{c}').collect();
    if pages.len() != scans.len() {
        return 1.0;
    }
    let total: f64 = pages
        .iter()
        .zip(scans)
        .map(|(page, scan)| {
            images::distance(page.trim(), &scan.text) as f64 / scan.text.len().max(1) as f64
        })
        .sum();
    total / scans.len() as f64
}
