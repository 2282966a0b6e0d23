//! BENCHMARKS.md from the results.

use std::{fmt::Write, path::Path};

use crate::{Results, Spread};

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
