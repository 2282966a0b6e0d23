//! The regression guard: `make bench` fails when the server's throughput falls grossly
//! below raw Tesseract's on the same machine in the same run.
//!
//! It lives here, not in `make test`, because a throughput ratio is only worth asserting
//! from long windows and several runs: two short windows taken one after the other on a
//! shared machine differ by more than any regression worth catching. The bound is far below
//! what the server measures (about 1.0 of the ceiling), so only a real collapse trips it.

use crate::Results;

/// The least fraction of the ceiling's median throughput, at as many threads as engines,
/// that the server's median throughput may reach with as many clients as engines.
pub const MIN_OF_CEILING: f64 = 0.5;

/// Every protocol whose throughput at `cores` clients fell below [`MIN_OF_CEILING`] of the
/// ceiling at `cores` threads, described; `Ok` when none did.
pub fn check(results: &Results) -> Result<(), String> {
    let ceiling = results
        .ceiling
        .iter()
        .find(|row| row.threads == results.cores)
        .map(|row| row.throughput.median())
        .ok_or("no ceiling was measured at as many threads as cores")?;
    let failures: Vec<String> = results
        .load
        .iter()
        .filter(|row| row.concurrency == results.cores)
        .filter_map(|row| {
            let ratio = row.throughput.median() / ceiling;
            // A NaN ratio (nothing measured) passes no bound: it fails too.
            let passed = ratio.is_finite() && ratio >= MIN_OF_CEILING;
            (!passed).then(|| {
                format!(
                    "{} at {} clients: {:.2} images/s, {ratio:.2} of raw Tesseract's {ceiling:.2}",
                    row.protocol,
                    row.concurrency,
                    row.throughput.median()
                )
            })
        })
        .collect();
    match failures.is_empty() {
        true => Ok(()),
        false => Err(format!(
            "throughput below {MIN_OF_CEILING} of the ceiling: {}",
            failures.join("; ")
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CeilingRow, LoadRow, Spread};

    fn spread(values: &[f64]) -> Spread {
        Spread {
            values: values.to_vec(),
        }
    }

    fn results(ceiling: &[f64], grpc: &[f64], rest: &[f64]) -> Results {
        let row = |protocol, values: &[f64]| LoadRow {
            protocol,
            concurrency: 2,
            throughput: spread(values),
            ..Default::default()
        };
        Results {
            cores: 2,
            ceiling: vec![
                CeilingRow {
                    threads: 1,
                    throughput: spread(&[100.0]),
                    ..Default::default()
                },
                CeilingRow {
                    threads: 2,
                    throughput: spread(ceiling),
                    ..Default::default()
                },
            ],
            load: vec![
                row("grpc", grpc),
                row("rest", rest),
                // Other concurrencies are not judged.
                LoadRow {
                    protocol: "grpc",
                    concurrency: 8,
                    throughput: spread(&[0.1]),
                    ..Default::default()
                },
            ],
            ..Default::default()
        }
    }

    #[test]
    fn medians_near_the_ceiling_pass_despite_one_slow_run() {
        assert_eq!(
            check(&results(
                &[9.0, 9.5, 9.3],
                &[2.0, 9.8, 10.0],
                &[9.6, 9.7, 9.5]
            )),
            Ok(())
        );
    }

    #[test]
    fn a_collapse_on_one_protocol_fails_naming_it() {
        let error = check(&results(&[10.0], &[9.9], &[4.0, 4.5, 3.0])).unwrap_err();
        assert!(
            error.contains("rest at 2 clients: 4.00 images/s, 0.40"),
            "{error}"
        );
        assert!(!error.contains("grpc"), "{error}");
    }

    #[test]
    fn nothing_measured_fails() {
        assert!(check(&results(&[10.0], &[], &[9.0])).is_err());
        assert!(check(&Results::default()).is_err());
    }
}
