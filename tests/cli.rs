//! The `tesserve` binary itself: `ocr`, `serve` + `healthcheck`, usage errors, signals.

mod common;

use std::{
    net::TcpListener,
    path::PathBuf,
    process::{Child, Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

const BIN: &str = env!("CARGO_BIN_EXE_tesserve");

fn tesserve(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn temp_png(name: &str, lines: &[&str]) -> PathBuf {
    let path = std::env::temp_dir().join(format!("tesserve-cli-{}-{name}.png", std::process::id()));
    std::fs::write(&path, common::png(lines)).unwrap();
    path
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `tesserve serve` child process, killed if the test fails.
struct Served {
    child: Child,
    port: u16,
}

impl Served {
    fn start(extra_env: &[(&str, &str)], remove_env: &[&str]) -> Served {
        let port = free_port();
        let mut command = Command::new(BIN);
        command
            .args(["serve", "--bind", "127.0.0.1", "--workers", "1"])
            .args(["--grpc-port", &port.to_string()])
            .args(["--http-port", &free_port().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        for (key, value) in extra_env {
            command.env(key, value);
        }
        for key in remove_env {
            command.env_remove(key);
        }
        Served {
            child: command.spawn().unwrap(),
            port,
        }
    }

    fn healthcheck(&self) -> Output {
        tesserve(&[
            "healthcheck",
            "--grpc-port",
            &self.port.to_string(),
            "--timeout",
            "2",
        ])
    }

    fn wait_ready(&self) {
        let started = Instant::now();
        while !self.healthcheck().status.success() {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "server never became ready"
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    fn terminate(mut self) -> std::process::ExitStatus {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "no exit after SIGTERM"
            );
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn ocr_prints_the_text_of_each_file() {
    let first = temp_png("first", &["Command line one"]);
    let second = temp_png("second", &["Command line two"]);
    let output = tesserve(&["ocr", first.to_str().unwrap(), second.to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr(&output));
    let stdout = String::from_utf8(output.stdout).unwrap();
    common::assert_text(&stdout, "Command line one Command line two", 2);
}

#[test]
fn ocr_json_has_text_confidence_and_words() {
    let file = temp_png("json", &["Invoice 2024"]);
    let output = tesserve(&["ocr", "--json", "--psm", "7", file.to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr(&output));
    let line: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    common::assert_text(line["text"].as_str().unwrap(), "Invoice 2024", 1);
    assert!(line["confidence"].as_f64().unwrap() > 0.5);
    assert_eq!(line["words"][1]["text"], "2024");
}

#[test]
fn ocr_names_the_file_it_could_not_use() {
    let output = tesserve(&["ocr", "/nonexistent/scan.png"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("/nonexistent/scan.png"),
        "{}",
        stderr(&output)
    );

    let garbage = std::env::temp_dir().join(format!("tesserve-cli-{}.png", std::process::id()));
    std::fs::write(&garbage, b"not a picture").unwrap();
    let output = tesserve(&["ocr", garbage.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("image format not recognised"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn configuration_mistakes_are_usage_errors_before_anything_binds() {
    let output = tesserve(&["--lang", "klingon", "--grpc-port", "1", "--http-port", "1"]);
    assert_eq!(output.status.code(), Some(2));
    let message = stderr(&output);
    assert!(
        message.contains("--lang: language 'klingon' is not installed (installed: "),
        "{message}"
    );
    assert!(message.contains("eng"), "{message}");

    let output = tesserve(&["--workers", "0"]);
    assert_eq!(output.status.code(), Some(2));
    let output = tesserve(&["--tessdata", "/nonexistent"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("/nonexistent"));
}

#[test]
fn serve_reports_ready_and_exits_cleanly_on_sigterm() {
    let served = Served::start(&[], &[]);
    served.wait_ready();
    let status = served.terminate();
    assert!(status.success(), "{status:?}");
}

#[test]
fn healthcheck_fails_when_nothing_listens() {
    let output = tesserve(&[
        "healthcheck",
        "--grpc-port",
        &free_port().to_string(),
        "--timeout",
        "1",
    ]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("not reachable"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn kserve_style_environment_configures_the_server() {
    let served = Served::start(&[("TESSERVE_MODEL_NAME", "receipts")], &[]);
    served.wait_ready();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut client = common::client(([127, 0, 0, 1], served.port).into()).await;
        let ready = client
            .model_ready(tesserve::oip::pb::ModelReadyRequest {
                name: "receipts".into(),
                version: String::new(),
            })
            .await
            .unwrap();
        assert!(ready.into_inner().ready);
    });
}

/// Regression: libgomp reads OMP_THREAD_LIMIT when it loads, before `main`; the binary must
/// re-execute itself with the limit set or parallel engines crawl.
#[test]
fn openmp_thread_limit_is_set_before_tesseract_loads() {
    let served = Served::start(&[], &["OMP_THREAD_LIMIT"]);
    served.wait_ready();
    let environ = std::fs::read(format!("/proc/{}/environ", served.child.id())).unwrap();
    assert!(
        environ
            .split(|&b| b == 0)
            .any(|entry| entry == b"OMP_THREAD_LIMIT=1"),
        "the serving process runs without OMP_THREAD_LIMIT=1"
    );
}
