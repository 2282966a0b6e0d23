use std::process::ExitCode;

use clap::Parser;
use tesserve::{
    commands,
    config::{Cli, Command},
    server, telemetry,
};

fn main() -> ExitCode {
    limit_openmp_threads();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("tesserve: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    // Declared after the runtime, so dropped (and flushed) while the runtime still runs.
    let _telemetry = {
        let _context = runtime.enter();
        match telemetry::init(cli.log_format, None) {
            Ok(telemetry) => telemetry,
            Err(error) => {
                eprintln!("tesserve: {error}");
                return ExitCode::from(2);
            }
        }
    };
    let outcome = match cli
        .command
        .unwrap_or_else(|| Command::Serve(Box::new(cli.serve)))
    {
        Command::Serve(args) => match args.validate() {
            Ok(config) if args.check_config => {
                use std::io::Write;
                // A closed pipe (`| head`) is not a configuration error.
                let _ = writeln!(std::io::stdout(), "{config:#?}");
                return ExitCode::SUCCESS;
            }
            Ok(config) => runtime
                .block_on(server::run(config, shutdown_signal()))
                .map_err(|e| e.to_string()),
            Err(error) => {
                // A configuration mistake is a usage error: report it before binding anything.
                eprintln!("tesserve: {error}");
                return ExitCode::from(2);
            }
        },
        Command::Ocr(args) => runtime
            .block_on(commands::ocr(args))
            .map_err(|e| e.to_string()),
        Command::Healthcheck(args) => runtime
            .block_on(commands::healthcheck(args))
            .map_err(|e| e.to_string()),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "tesserve failed");
            eprintln!("tesserve: {error}");
            ExitCode::FAILURE
        }
    }
}

/// libgomp reads `OMP_THREAD_LIMIT` once, when the dynamic loader maps it, before `main` runs.
/// Without it each Tesseract engine starts several OpenMP threads that fight the pool's
/// workers for the CPUs, so the process re-executes itself with the limit set (a limit the
/// caller chose is left alone).
fn limit_openmp_threads() {
    use std::os::unix::process::CommandExt;

    if std::env::var_os("OMP_THREAD_LIMIT").is_some() {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let mut args = std::env::args_os();
    let arg0 = args.next().unwrap_or_else(|| exe.clone().into_os_string());
    let error = std::process::Command::new(&exe)
        .arg0(arg0)
        .args(args)
        .env("OMP_THREAD_LIMIT", "1")
        .exec();
    eprintln!("tesserve: warning: could not re-execute with OMP_THREAD_LIMIT=1: {error}");
}

/// Resolves on SIGTERM (Kubernetes) or Ctrl-C.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};

    let terminate = async {
        match signal(SignalKind::terminate()) {
            Ok(mut sigterm) => {
                sigterm.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
}
