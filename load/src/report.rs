//! What a load run found: counts by kind and outcome, latency percentiles of the right
//! answers, and the first few of anything that should never happen.

use std::{collections::BTreeMap, fmt, time::Duration};

use serde::Serialize;

use super::{Kind, Outcome, Protocol};

/// How many wrong texts and unexpected outcomes are kept as examples.
const EXAMPLES: usize = 10;

/// One finished request.
pub(super) struct Result {
    pub kind: Kind,
    pub protocol: Protocol,
    pub outcome: Outcome,
    pub latency: Duration,
}

/// Latency of right answers, in milliseconds.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Latency {
    pub count: usize,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    pub(crate) fn of(mut samples: Vec<Duration>) -> Latency {
        if samples.is_empty() {
            return Latency::default();
        }
        samples.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let at = |q: f64| ms(samples[((samples.len() - 1) as f64 * q).round() as usize]);
        Latency {
            count: samples.len(),
            mean_ms: samples.iter().map(|d| ms(*d)).sum::<f64>() / samples.len() as f64,
            p50_ms: at(0.50),
            p95_ms: at(0.95),
            p99_ms: at(0.99),
            max_ms: at(1.0),
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub elapsed_seconds: f64,
    pub concurrency: usize,
    pub requests: usize,
    /// Right answers per second.
    pub throughput: f64,
    /// kind → outcome → count.
    pub counts: BTreeMap<&'static str, BTreeMap<&'static str, u64>>,
    /// protocol → latency of right answers to valid requests; `all` for both.
    pub latency: BTreeMap<&'static str, Latency>,
    /// CPU time the load generator itself used (user + system).
    pub client_cpu_seconds: f64,
    pub wrong_texts: u64,
    pub unexpected: u64,
    /// The first few wrong texts and unexpected outcomes, described.
    pub examples: Vec<String>,
}

impl Report {
    pub(super) fn new(
        results: Vec<Result>,
        elapsed: Duration,
        client_cpu_seconds: f64,
        concurrency: usize,
    ) -> Report {
        let mut counts: BTreeMap<_, BTreeMap<_, u64>> = BTreeMap::new();
        let mut latencies: BTreeMap<_, Vec<Duration>> = BTreeMap::new();
        let (mut wrong_texts, mut unexpected, mut examples) = (0, 0, Vec::new());
        for result in &results {
            *counts
                .entry(result.kind.name())
                .or_default()
                .entry(result.outcome.name())
                .or_default() += 1;
            match &result.outcome {
                Outcome::Ok if result.kind == Kind::Valid => {
                    for key in [result.protocol.name(), "all"] {
                        latencies.entry(key).or_default().push(result.latency);
                    }
                }
                Outcome::WrongText { got, want } => {
                    wrong_texts += 1;
                    examples.push(format!(
                        "{} {}: got {got:?}, drew {want:?}",
                        result.protocol.name(),
                        result.kind.name()
                    ));
                }
                Outcome::Unexpected(what) => {
                    unexpected += 1;
                    examples.push(format!(
                        "{} {}: {what}",
                        result.protocol.name(),
                        result.kind.name()
                    ));
                }
                _ => {}
            }
        }
        examples.truncate(EXAMPLES);
        let right = results.iter().filter(|r| r.outcome == Outcome::Ok).count();
        Report {
            elapsed_seconds: elapsed.as_secs_f64(),
            concurrency,
            requests: results.len(),
            throughput: right as f64 / elapsed.as_secs_f64().max(1e-9),
            counts,
            latency: latencies
                .into_iter()
                .map(|(k, v)| (k, Latency::of(v)))
                .collect(),
            client_cpu_seconds,
            wrong_texts,
            unexpected,
            examples,
        }
    }

    /// No wrong text and no outcome the request's kind did not deserve.
    pub fn is_clean(&self) -> bool {
        self.wrong_texts == 0 && self.unexpected == 0
    }

    /// How many requests of `kind` ended as `outcome` (by their names).
    pub fn count(&self, kind: Kind, outcome: &str) -> u64 {
        self.counts
            .get(kind.name())
            .and_then(|outcomes| outcomes.get(outcome))
            .copied()
            .unwrap_or(0)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} requests in {:.1} s at concurrency {}: {:.1} right answers/s, load generator CPU {:.1} s",
            self.requests, self.elapsed_seconds, self.concurrency, self.throughput, self.client_cpu_seconds
        )?;
        writeln!(f, "\n{:<16} outcomes", "kind")?;
        for (kind, outcomes) in &self.counts {
            let line: Vec<String> = outcomes.iter().map(|(o, n)| format!("{o}={n}")).collect();
            writeln!(f, "{kind:<16} {}", line.join(" "))?;
        }
        writeln!(
            f,
            "\n{:<8} {:>7} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "latency", "count", "mean ms", "p50 ms", "p95 ms", "p99 ms", "max ms"
        )?;
        for (protocol, l) in &self.latency {
            writeln!(
                f,
                "{protocol:<8} {:>7} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1}",
                l.count, l.mean_ms, l.p50_ms, l.p95_ms, l.p99_ms, l.max_ms
            )?;
        }
        writeln!(
            f,
            "\nwrong texts: {}   unexpected outcomes: {}",
            self.wrong_texts, self.unexpected
        )?;
        for example in &self.examples {
            writeln!(f, "  {example}")?;
        }
        Ok(())
    }
}

/// CPU seconds this process has used, from /proc (0 where there is none).
pub(super) fn process_cpu() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // Linux reports in USER_HZ, 100 on every architecture it runs on.
    (ticks(11) + ticks(12)) / 100.0
}
