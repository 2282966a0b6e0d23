//! BENCHMARKS.md from the results.

use std::{fmt::Write, path::Path};

use crate::{document::DocumentFigures, Results, Spread};

/// `median (min–max)` with `digits` decimals.
fn figure(spread: &Spread, digits: usize) -> String {
    format!(
        "{:.digits$} ({:.digits$}–{:.digits$})",
        spread.median(),
        spread.min(),
        spread.max()
    )
}

pub fn render(results: &Results, chart: &Path) -> String {
    let mut out = String::new();
    let ceiling = |threads: usize| {
        results
            .ceiling
            .iter()
            .find(|row| row.threads == threads)
            .map_or(f64::NAN, |row| row.throughput.median())
    };
    let _ = writeln!(
        out,
        "# Benchmarks\n\nWritten by `make bench` (`{}`); do not edit by hand.\n",
        format!("tesserve-bench {}", results.args).trim_end()
    );
    let _ = writeln!(
        out,
        "- Machine: {}\n- Commit: `{}`\n- Each figure: median of {} runs of {} s, (min–max) beside it\n- Image set: {} text snippets rendered with DejaVu Sans at 32 px, 1, 3, 8 and 20 lines in turn (the same sequence for the ceiling and the server); an A4 page at 300 dpi (2480 × 3508, 40 lines of 12-point text) for the big-page figures\n- Result cache: off (`--cache-bytes` unset)\n",
        results.machine, results.commit, results.runs, results.seconds, results.snippets
    );
    let _ = writeln!(
        out,
        "## The ceiling: raw Tesseract\n\nOne tesseract-rs engine per thread, images decoded beforehand, `OMP_THREAD_LIMIT=1`.\n\n| threads | images/s | per-image p50 ms | p95 ms |\n|---|---|---|---|"
    );
    for row in &results.ceiling {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} |",
            row.threads,
            figure(&row.throughput, 2),
            figure(&row.p50_ms, 1),
            figure(&row.p95_ms, 1)
        );
    }
    let _ = writeln!(
        out,
        "\n## The server\n\n`tesserve serve --workers {cores}` in one process, `tesserve-load` in another, on loopback. gRPC sends `ModelInfer` with BYTES contents; REST sends a multipart upload to `/predict`. \"of ceiling\" divides by the ceiling at as many threads as clients, at most {cores}. Overhead is the mean end-to-end latency minus the mean time inside Tesseract (from the server's own histogram): decoding, queueing, protocol and the network stack.\n\n| protocol | clients | images/s | of ceiling | p50 ms | p95 ms | p99 ms | not right | overhead ms | load generator CPU s | server RSS MiB |\n|---|---|---|---|---|---|---|---|---|---|---|",
        cores = results.cores
    );
    for row in &results.load {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {:.2} | {} | {} | {} | {:.0} | {} | {} | {:.0} |",
            row.protocol,
            row.concurrency,
            figure(&row.throughput, 2),
            row.throughput.median() / ceiling(row.concurrency.min(results.cores)),
            figure(&row.p50_ms, 1),
            figure(&row.p95_ms, 1),
            figure(&row.p99_ms, 1),
            row.errors.median(),
            figure(&row.overhead_ms, 1),
            figure(&row.client_cpu_s, 2),
            row.server_rss_mib.max(),
        );
    }
    let _ = writeln!(
        out,
        "\nSmall images (the 1- and 3-line snippets) at concurrency 1, gRPC: p50 {} ms on the server against {} ms for raw Tesseract on one engine ({:+.1} ms).",
        figure(&results.small_server_p50_ms, 1),
        figure(&results.small_ceiling_p50_ms, 1),
        results.small_server_p50_ms.median() - results.small_ceiling_p50_ms.median()
    );
    let _ = writeln!(
        out,
        "\n![Throughput against concurrency, with the ceiling]({})\n",
        chart.display()
    );
    let _ = writeln!(
        out,
        "## A big page\n\nOne A4 page at 300 dpi, alone (concurrency 1, gRPC), read {} times per run by each in turn; \"of one engine\" is each run's time over the same run's raw Tesseract time. With `--split-pages auto` (the default) the server cuts it between lines into strips of equal ink (only where the page is a single column) and reads them on all idle engines at once; `off` reads it on one engine, as raw Tesseract does.\n\n| | ms | of one engine |\n|---|---|---|\n| raw Tesseract, one engine | {} | 1.00 |\n| server, `--split-pages off` | {} | {} |\n| server, `--split-pages auto` | {} | {} |\n\nText of the split page against the whole page: {:.2} % character error rate (whitespace runs counted as one space).\n\nUnder load, {cores} clients sending pages to {cores} engines (so none is idle to help): {} pages/s with `auto` against {} with `off`.\n",
        results.page_reads,
        figure(&results.page_ceiling_ms, 0),
        figure(&results.page_whole_ms, 0),
        figure(&results.page_whole_ratio, 2),
        figure(&results.page_split_ms, 0),
        figure(&results.page_split_ratio, 2),
        results.page_split_cer * 100.0,
        figure(&results.page_split_busy, 2),
        figure(&results.page_whole_busy, 2),
        cores = results.cores,
    );
    if let Some(doc) = &results.document {
        document(&mut out, doc);
    }
    let _ = writeln!(
        out,
        "## Start-up and memory\n\n| | |\n|---|---|\n| start-up to ready (process start → `/v2/health/ready` 200) | {} ms |\n| RSS at idle, ready | {} MiB |\n| RSS before {} requests | {:.0} MiB |\n| RSS after them | {:.0} MiB ({:+.0} MiB) |",
        figure(&results.startup_ms, 0),
        figure(&results.rss_idle_mib, 0),
        results.growth_requests,
        results.rss_before_growth_mib,
        results.rss_after_growth_mib,
        results.rss_after_growth_mib - results.rss_before_growth_mib
    );
    out
}

/// The document section: the server against raw Tesseract and OCRmyPDF on one PDF.
fn document(out: &mut String, doc: &DocumentFigures) {
    let rate = |seconds: &Spread| doc.pages as f64 / seconds.median();
    let ocrmypdf = match &doc.ocrmypdf {
        Ok(seconds) => format!(
            "| `ocrmypdf --jobs {engines} --output-type pdf` (OCRmyPDF {version}) | {} | {:.2} | {} × the server's time for the searchable PDF |",
            figure(seconds, 1),
            rate(seconds),
            figure(&doc.ocrmypdf_ratio, 2),
            engines = doc.engines,
            version = ocrmypdf_version(),
        ),
        Err(why) => format!("| `ocrmypdf` | not measured: {why} | | |"),
    };
    let _ = writeln!(
        out,
        "## A document\n\nA {pages}-page scanned PDF ({mib:.1} MiB: A4 pages of 40 lines of text, gray, Flate, placed at 300 dpi) read in one OIP REST v2 request with {engines} engines, against raw Tesseract reading the same pages already rendered (by the server's own renderer) once each on {engines} threads, and OCRmyPDF on the same file, in turn within each run. \"Ideal\" is the server's own recognition time of the pages, summed, over the engines: the completion time of a perfect schedule. Rendering the pages took {render} s of CPU in all, which raw Tesseract never spends.\n\n| | s | pages/s | |\n|---|---|---|---|\n| raw Tesseract, {engines} engines, pages pre-rendered | {raw} | {raw_rate:.2} | 1.00 |\n| server: text and page reports | {server} | {server_rate:.2} | {of_ceiling} of raw |\n| ideal: page recognition times / {engines} | {ideal} | | server takes {of_ideal} × it |\n| server: text, page reports and the searchable PDF | {searchable} | {searchable_rate:.2} | |\n{ocrmypdf}\n\nText of the pages against what was drawn: {cer:.2} % mean character error rate.\n",
        pages = doc.pages,
        mib = doc.pdf_bytes as f64 / (1 << 20) as f64,
        engines = doc.engines,
        render = figure(&doc.render_s, 1),
        raw = figure(&doc.raw_s, 1),
        raw_rate = rate(&doc.raw_s),
        server = figure(&doc.server_s, 1),
        server_rate = rate(&doc.server_s),
        of_ceiling = figure(&doc.of_ceiling, 2),
        ideal = figure(&doc.ideal_s, 1),
        of_ideal = figure(&doc.of_ideal, 2),
        searchable = figure(&doc.searchable_s, 1),
        searchable_rate = rate(&doc.searchable_s),
        cer = doc.cer * 100.0,
    );
}

/// `ocrmypdf --version`, or "unknown".
fn ocrmypdf_version() -> String {
    std::process::Command::new("ocrmypdf")
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "unknown".into())
}
