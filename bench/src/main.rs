//! `make bench`: measures raw Tesseract (the ceiling) and the server over gRPC and REST on the
//! same generated images in one run, and writes BENCHMARKS.md and a chart.
//!
//! The server runs as a child process and the load comes from `tesserve-load` in another,
//! so the three share nothing but the machine. Every figure is the median of `--runs` runs,
//! with the range beside it. The run stops at the first wrong answer, and fails after
//! writing its figures on a gross throughput regression against the ceiling ([`guard`]).

mod chart;
mod document;
mod guard;
mod markdown;
mod server;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use clap::Parser;
use serde_json::Value;
use tesserve::config::TESSDATA_SEARCH_PATH;
use tesserve_load::{ceiling, images, render::Renderer};

use server::Server;

#[derive(Debug, Parser)]
#[command(about)]
struct Args {
    /// Runs of every measurement; figures are their median.
    #[arg(long, default_value_t = 3)]
    runs: usize,

    /// Seconds of each run.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,

    /// Text snippets in the image set (1, 3, 8 and 20 lines, in turn).
    #[arg(long, default_value_t = 24)]
    snippets: usize,

    /// Reads of the A4 page per run, on raw Tesseract and on each server.
    #[arg(long, default_value_t = 5)]
    page_reads: usize,

    /// Pages of the scanned PDF of the document figure.
    #[arg(long, default_value_t = 20)]
    document_pages: usize,

    /// Requests of the memory-growth run.
    #[arg(long, default_value_t = 10_000)]
    growth_requests: u64,

    /// Directory with the release `tesserve` and `tesserve-load`.
    #[arg(long, default_value = "target/release")]
    bin: PathBuf,

    #[arg(long, default_value = "BENCHMARKS.md")]
    out: PathBuf,

    #[arg(long, default_value = "docs/benchmarks.png")]
    chart: PathBuf,
}

/// One measured figure over several runs.
#[derive(Clone, Debug, Default)]
pub struct Spread {
    pub values: Vec<f64>,
}

impl Spread {
    pub fn push(&mut self, value: f64) {
        self.values.push(value);
    }

    pub fn median(&self) -> f64 {
        let mut sorted = self.values.clone();
        sorted.sort_by(f64::total_cmp);
        match sorted.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => sorted[n / 2],
            n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
        }
    }

    pub fn min(&self) -> f64 {
        self.values.iter().copied().fold(f64::INFINITY, f64::min)
    }

    pub fn max(&self) -> f64 {
        self.values
            .iter()
            .copied()
            .fold(f64::NEG_INFINITY, f64::max)
    }
}

/// The ceiling at one thread count.
#[derive(Debug, Default)]
pub struct CeilingRow {
    pub threads: usize,
    pub throughput: Spread,
    pub p50_ms: Spread,
    pub p95_ms: Spread,
}

/// The server at one protocol and concurrency.
#[derive(Debug, Default)]
pub struct LoadRow {
    pub protocol: &'static str,
    pub concurrency: usize,
    pub throughput: Spread,
    pub p50_ms: Spread,
    pub p95_ms: Spread,
    pub p99_ms: Spread,
    /// Requests that did not get the right text.
    pub errors: Spread,
    /// Mean end-to-end latency minus mean time inside Tesseract, per request.
    pub overhead_ms: Spread,
    pub client_cpu_s: Spread,
    pub server_rss_mib: Spread,
}

/// Everything `BENCHMARKS.md` reports.
#[derive(Debug, Default)]
pub struct Results {
    pub machine: String,
    pub cores: usize,
    pub commit: String,
    pub args: String,
    pub runs: usize,
    pub seconds: f64,
    pub snippets: usize,
    pub ceiling: Vec<CeilingRow>,
    pub load: Vec<LoadRow>,
    pub startup_ms: Spread,
    pub rss_idle_mib: Spread,
    pub growth_requests: u64,
    pub rss_before_growth_mib: f64,
    pub rss_after_growth_mib: f64,
    /// p50 of small images (1 and 3 lines) at concurrency 1: raw Tesseract, then the server.
    pub small_ceiling_p50_ms: Spread,
    pub small_server_p50_ms: Spread,
    pub page_reads: usize,
    pub page_ceiling_ms: Spread,
    /// The server, splitting the page across idle engines.
    pub page_split_ms: Spread,
    /// The server with `--split-pages off`.
    pub page_whole_ms: Spread,
    /// Each run's server figures divided by the same run's raw Tesseract figure.
    pub page_split_ratio: Spread,
    pub page_whole_ratio: Spread,
    /// Pages per second with as many clients as engines, so no engine is idle to help.
    pub page_split_busy: Spread,
    pub page_whole_busy: Spread,
    /// Character error rate of the split page's text against the whole page's.
    pub page_split_cer: f64,
    pub document: Option<document::DocumentFigures>,
}

fn main() {
    let args = Args::parse();
    if std::env::var_os("OMP_THREAD_LIMIT").is_none() {
        eprintln!("tesserve-bench: set OMP_THREAD_LIMIT=1 (make bench does), or the ceiling measures OpenMP contention");
        std::process::exit(2);
    }
    if let Err(error) = run(&args) {
        eprintln!("tesserve-bench: {error}");
        std::process::exit(1);
    }
}

type Error = Box<dyn std::error::Error>;

fn run(args: &Args) -> Result<(), Error> {
    let cores = std::thread::available_parallelism()?.get();
    let tessdata = TESSDATA_SEARCH_PATH
        .iter()
        .map(Path::new)
        .find(|dir| dir.join("eng.traineddata").exists())
        .ok_or("no eng.traineddata found: install tesseract-ocr-eng")?;
    let renderer = Renderer::new()?;
    let snippets = images::snippets(&renderer, args.snippets)?;
    let page = images::a4_page(&renderer, 0)?;
    let duration = Duration::from_secs_f64(args.seconds);
    let mut results = Results {
        machine: machine(),
        cores,
        commit: git(&["rev-parse", "--short", "HEAD"]),
        args: std::env::args().skip(1).collect::<Vec<_>>().join(" "),
        runs: args.runs,
        seconds: args.seconds,
        snippets: args.snippets,
        growth_requests: args.growth_requests,
        page_reads: args.page_reads,
        ..Default::default()
    };

    for threads in [1, cores] {
        let mut row = CeilingRow {
            threads,
            ..Default::default()
        };
        for run in 0..args.runs {
            let measured = ceiling::measure(&snippets, tessdata, threads, duration)?;
            eprintln!(
                "ceiling T={threads} run {run}: {:.2} images/s, p50 {:.1} ms",
                measured.throughput, measured.latency.p50_ms
            );
            row.throughput.push(measured.throughput);
            row.p50_ms.push(measured.latency.p50_ms);
            row.p95_ms.push(measured.latency.p95_ms);
        }
        results.ceiling.push(row);
    }
    // Small images alone: what per-request overhead costs where it shows most.
    let small = &snippets[..2.min(snippets.len())];
    for _ in 0..args.runs {
        let measured = ceiling::measure(small, tessdata, 1, duration)?;
        results.small_ceiling_p50_ms.push(measured.latency.p50_ms);
    }

    for _ in 0..args.runs {
        let server = Server::start(&args.bin, cores, &[])?;
        results.startup_ms.push(server.startup.as_secs_f64() * 1e3);
        results.rss_idle_mib.push(server.rss_mib());
    }

    let server = Server::start(&args.bin, cores, &[])?;
    for protocol in ["grpc", "rest"] {
        for concurrency in [1, cores, 2 * cores, 4 * cores] {
            let mut row = LoadRow {
                protocol,
                concurrency,
                ..Default::default()
            };
            for run in 0..args.runs {
                let before = server.recognition()?;
                let (report, rss) = server.while_sampling_rss(|| {
                    let snippets = args.snippets.to_string();
                    load(
                        &args.bin,
                        &server,
                        protocol,
                        concurrency,
                        args.seconds,
                        &["--snippets", &snippets],
                    )
                })?;
                let after = server.recognition()?;
                let all = &report["latency"]["all"];
                let throughput = report["throughput"].as_f64().unwrap_or(0.0);
                eprintln!(
                    "{protocol} c={concurrency} run {run}: {throughput:.2} images/s, p50 {:.1} ms",
                    all["p50_ms"].as_f64().unwrap_or(f64::NAN)
                );
                row.throughput.push(throughput);
                for (spread, key) in [
                    (&mut row.p50_ms, "p50_ms"),
                    (&mut row.p95_ms, "p95_ms"),
                    (&mut row.p99_ms, "p99_ms"),
                ] {
                    spread.push(all[key].as_f64().unwrap_or(f64::NAN));
                }
                let requests = report["requests"].as_f64().unwrap_or(0.0);
                let right = all["count"].as_f64().unwrap_or(0.0);
                row.errors.push(requests - right);
                let recognised = after.since(&before);
                row.overhead_ms
                    .push(all["mean_ms"].as_f64().unwrap_or(f64::NAN) - recognised * 1e3);
                row.client_cpu_s
                    .push(report["client_cpu_seconds"].as_f64().unwrap_or(f64::NAN));
                row.server_rss_mib.push(rss);
            }
            results.load.push(row);
        }
    }

    for _ in 0..args.runs {
        let report = load(
            &args.bin,
            &server,
            "grpc",
            1,
            args.seconds,
            &["--snippets", "2"],
        )?;
        results.small_server_p50_ms.push(
            report["latency"]["all"]["p50_ms"]
                .as_f64()
                .unwrap_or(f64::NAN),
        );
    }

    // The big page alone, read in turn by raw Tesseract, the server with `--split-pages off`
    // and the server splitting it (the default), so that drift in the machine's speed hits
    // all three alike; each run's ratios compare figures taken a few seconds apart.
    let whole = Server::start(&args.bin, cores, &["--split-pages", "off"])?;
    let page_reads = args.page_reads.to_string();
    let page_only = [
        "--snippets",
        "0",
        "--a4-pages",
        "1",
        "--requests",
        &page_reads,
    ];
    let read_page = |server: &Server| -> Result<f64, Error> {
        let report = load(&args.bin, server, "grpc", 1, 3600.0, &page_only)?;
        Ok(report["latency"]["all"]["mean_ms"]
            .as_f64()
            .unwrap_or(f64::NAN))
    };
    // Warm-up: the raw engine reads the page once before its timed reads, and so does each
    // server.
    read_page(&whole)?;
    read_page(&server)?;
    for run in 0..args.runs {
        let raw = ceiling::repeat(&page, tessdata, args.page_reads)?.mean_ms;
        let (whole_ms, split_ms) = (read_page(&whole)?, read_page(&server)?);
        eprintln!("page run {run}: raw {raw:.0} ms, off {whole_ms:.0} ms, auto {split_ms:.0} ms");
        results.page_ceiling_ms.push(raw);
        results.page_whole_ms.push(whole_ms);
        results.page_split_ms.push(split_ms);
        results.page_whole_ratio.push(whole_ms / raw);
        results.page_split_ratio.push(split_ms / raw);
    }
    // With every engine busy, splitting must cost nothing: pages per second with as many
    // clients as engines, both ways.
    let busy_requests = (4 * cores).to_string();
    let busy = [
        "--snippets",
        "0",
        "--a4-pages",
        "1",
        "--requests",
        &busy_requests,
    ];
    for _ in 0..args.runs {
        for (target, figure) in [
            (&whole, &mut results.page_whole_busy),
            (&server, &mut results.page_split_busy),
        ] {
            let report = load(&args.bin, target, "grpc", cores, 3600.0, &busy)?;
            figure.push(report["throughput"].as_f64().unwrap_or(f64::NAN));
        }
    }
    let (split_text, whole_text) = (server.read(&page.image)?, whole.read(&page.image)?);
    results.page_split_cer =
        images::distance(&split_text, &whole_text) as f64 / whole_text.len().max(1) as f64;
    drop(whole);

    results.document = Some(document::measure(
        &args.bin,
        &renderer,
        tessdata,
        cores,
        args.document_pages,
        args.runs,
    )?);

    results.rss_before_growth_mib = server.rss_mib();
    let growth = args.growth_requests.to_string();
    load(
        &args.bin,
        &server,
        "grpc",
        cores,
        3600.0,
        &["--snippets", "1", "--requests", &growth],
    )?;
    results.rss_after_growth_mib = server.rss_mib();
    drop(server);

    if let Some(dir) = args.chart.parent() {
        std::fs::create_dir_all(dir)?;
    }
    chart::draw(&results, &args.chart)?;
    std::fs::write(&args.out, markdown::render(&results, &args.chart))?;
    eprintln!("wrote {} and {}", args.out.display(), args.chart.display());
    guard::check(&results)?;
    Ok(())
}

/// Runs `tesserve-load` against the server and returns its JSON report.
fn load(
    bin: &Path,
    server: &Server,
    protocol: &str,
    concurrency: usize,
    seconds: f64,
    extra: &[&str],
) -> Result<Value, Error> {
    let target = match protocol {
        "grpc" => [
            "--grpc".to_owned(),
            format!("127.0.0.1:{}", server.grpc_port),
        ],
        _ => [
            "--rest".to_owned(),
            format!("http://127.0.0.1:{}", server.http_port),
        ],
    };
    let output = Command::new(bin.join("tesserve-load"))
        .args(target)
        .args(["--concurrency", &concurrency.to_string()])
        .args(["--duration", &seconds.to_string()])
        .arg("--json")
        .args(extra)
        .output()?;
    let report: Value = serde_json::from_slice(&output.stdout).map_err(|e| {
        format!(
            "tesserve-load printed no report ({e}): {}",
            String::from_utf8_lossy(&output.stderr)
        )
    })?;
    if !output.status.success() {
        return Err(format!("tesserve-load found wrong answers: {report}").into());
    }
    Ok(report)
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, name)| name.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kib| kib.parse::<f64>().ok())
        })
        .map(|kib| format!("{:.0} GiB", kib / 1024.0 / 1024.0))
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cpu}, {cores} cores available, {memory}")
}

fn git(args: &[&str]) -> String {
    Command::new("git")
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".into())
}
