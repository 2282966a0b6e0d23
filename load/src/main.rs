//! `tesserve-load`: drives a tesserve server over gRPC and REST with a mix of valid and
//! hostile requests, checks every answer, and reports outcomes and latency percentiles.

use std::{process::ExitCode, sync::Arc, time::Duration};

use clap::Parser;
use tesserve_load::{images, render::Renderer, LoadConfig, Mix};

#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// gRPC address, e.g. `http://127.0.0.1:8081` (a bare `host:port` works too).
    #[arg(long)]
    grpc: Option<String>,

    /// REST base URL, e.g. `http://127.0.0.1:8080`; requests go to `/predict` (multipart).
    #[arg(long)]
    rest: Option<String>,

    /// Model name.
    #[arg(long, default_value = "ocr")]
    model: String,

    /// API key, sent as `authorization: Bearer <key>`.
    #[arg(long, env = "TESSERVE_API_KEY")]
    api_key: Option<String>,

    /// Host name to ask for (gRPC `:authority`, HTTP `Host`), e.g. an ingress gateway's
    /// virtual host when connecting to its address.
    #[arg(long)]
    authority: Option<String>,

    /// Clients sending at once (split between gRPC and REST when both are given).
    #[arg(long, default_value_t = 4)]
    concurrency: usize,

    /// Seconds to run.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,

    /// Stop after this many requests.
    #[arg(long)]
    requests: Option<u64>,

    /// Requests per second to start, across all clients (default: as fast as answers come).
    #[arg(long)]
    rate: Option<f64>,

    /// Weighted kinds of request: valid, corrupt, over_limit, cancel, short_deadline.
    #[arg(long, default_value = "valid")]
    mix: Mix,

    /// Distinct rendered text snippets (1 to 20 lines) to send.
    #[arg(long, default_value_t = 24)]
    snippets: usize,

    /// Rendered A4 pages at 300 dpi to add to the set.
    #[arg(long, default_value_t = 0)]
    a4_pages: u64,

    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("tesserve-load: {error}");
            ExitCode::from(2)
        }
    }
}

fn with_scheme(target: String) -> String {
    match target.contains("://") {
        true => target,
        false => format!("http://{target}"),
    }
}

/// `Ok(clean)`: whether every answer was right.
fn run(args: Args) -> Result<bool, Box<dyn std::error::Error>> {
    let renderer = Renderer::new()?;
    let mut samples = images::snippets(&renderer, args.snippets)?;
    for seed in 0..args.a4_pages {
        samples.push(images::a4_page(&renderer, seed)?);
    }
    let duration = Duration::try_from_secs_f64(args.duration)?;
    let config = LoadConfig {
        grpc: args.grpc.map(with_scheme),
        rest: args.rest.map(with_scheme),
        model: args.model,
        api_key: args.api_key,
        authority: args.authority,
        concurrency: args.concurrency.max(1),
        duration,
        requests: args.requests,
        rate: args.rate,
        mix: args.mix,
        samples: Arc::new(samples),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let report = runtime.block_on(tesserve_load::run(config))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{report}");
    }
    Ok(report.is_clean())
}
