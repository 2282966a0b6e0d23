//! The README's facts that code can check: its configuration reference is the one generated
//! from the clap definitions, and its `openssl` recipe makes certificates the real server
//! accepts (and the server refuses the v1 certificate the same tool makes by default).
//!
//! `UPDATE_README=1 cargo test --test readme` rewrites the configuration reference.

mod common;

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use common::served::Served;
use reqwest::{
    multipart::{Form, Part},
    StatusCode,
};

const CONFIG_START: &str = "<!-- config:start -->";
const CONFIG_END: &str = "<!-- config:end -->";
const CERTS_START: &str = "<!-- tls-certificates:start -->";
const CERTS_END: &str = "<!-- tls-certificates:end -->";

fn readme_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")
}

/// The text strictly between two marker lines, and its byte range in `text`.
fn between<'a>(text: &'a str, start: &str, end: &str) -> (std::ops::Range<usize>, &'a str) {
    let from = text
        .find(start)
        .unwrap_or_else(|| panic!("README.md has no {start} line"))
        + start.len();
    let to = from
        + text[from..]
            .find(end)
            .unwrap_or_else(|| panic!("README.md has no {end} after {start}"));
    // The block starts after the marker's own line break.
    let from = from + usize::from(text[from..].starts_with('\n'));
    (from..to, &text[from..to])
}

#[test]
fn readme_configuration_reference_is_generated_from_the_clap_definitions() {
    let path = readme_path();
    let readme = std::fs::read_to_string(&path).unwrap();
    let (range, current) = between(&readme, CONFIG_START, CONFIG_END);
    let fresh = tesserve::config::reference();
    if current == fresh {
        return;
    }
    if std::env::var_os("UPDATE_README").is_some() {
        let mut updated = readme.clone();
        updated.replace_range(range, &fresh);
        // Write then rename: the other test here reads the README at the same time.
        let partial = path.with_extension("md.partial");
        std::fs::write(&partial, updated).unwrap();
        std::fs::rename(&partial, &path).unwrap();
        eprintln!("README.md: configuration reference rewritten");
        return;
    }
    panic!(
        "README.md's configuration reference differs from the clap definitions in \
         src/config.rs (- README, + generated):\n\n{}\n\
         Edit the doc comments in src/config.rs, not the README table, then regenerate with\n\
         \n    UPDATE_README=1 cargo test --test readme\n",
        diff(current, &fresh)
    );
}

/// A line diff (longest common subsequence): short inputs, so the quadratic table is fine.
fn diff(old: &str, new: &str) -> String {
    let (a, b): (Vec<&str>, Vec<&str>) = (old.lines().collect(), new.lines().collect());
    let mut common = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            common[i][j] = if a[i] == b[j] {
                common[i + 1][j + 1] + 1
            } else {
                common[i + 1][j].max(common[i][j + 1])
            };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, String::new());
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            (i, j) = (i + 1, j + 1);
        } else if i < a.len() && (j == b.len() || common[i + 1][j] >= common[i][j + 1]) {
            out += &format!("- {}\n", a[i]);
            i += 1;
        } else {
            out += &format!("+ {}\n", b[j]);
            j += 1;
        }
    }
    out
}

/// A directory of its own for one test, removed afterwards.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("tesserve-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn file(&self, name: &str) -> String {
        self.0.join(name).to_str().unwrap().to_owned()
    }

    fn read(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.0.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs a shell script in `dir` the way a reader pasting it would, but stopping at the first
/// failing command.
fn bash(dir: &TempDir, script: &str) -> String {
    let output = Command::new("bash")
        .args(["-euo", "pipefail", "-c", script])
        .current_dir(&dir.0)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "script failed ({}):\n{script}\n--- stderr:\n{stderr}",
        output.status
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The README's fenced `sh` block between the certificate markers, verbatim.
fn certificate_recipe() -> String {
    let readme = std::fs::read_to_string(readme_path()).unwrap();
    let (_, block) = between(&readme, CERTS_START, CERTS_END);
    let body = block
        .trim()
        .strip_prefix("```sh\n")
        .and_then(|rest| rest.strip_suffix("```"))
        .expect("the certificate recipe is one ```sh block");
    body.to_owned()
}

/// An HTTPS client that trusts only the recipe's CA, presenting `identity` (certificate
/// then key, PEM) if given, and reaching "localhost" on loopback IPv4 where the server is.
fn client(ca: &[u8], identity: Option<Vec<u8>>, port: u16) -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(ca).unwrap()])
        .resolve("localhost", ([127, 0, 0, 1], port).into())
        .timeout(Duration::from_secs(30));
    if let Some(pem) = identity {
        builder = builder.identity(reqwest::Identity::from_pem(&pem).unwrap());
    }
    // rustls checks a client's own certificate here already (a v1 one is refused).
    builder
        .build()
        .unwrap_or_else(|e| panic!("not usable by a TLS client (rustls): {e:?}"))
}

fn pem_pair(dir: &TempDir, cert: &str, key: &str) -> Vec<u8> {
    [dir.read(cert), dir.read(key)].concat()
}

#[tokio::test]
async fn readme_openssl_recipe_makes_certificates_for_mutual_tls() {
    if Command::new("openssl").arg("version").output().is_err() {
        eprintln!("SKIPPED: openssl is not installed, so the README's recipe cannot be run");
        return;
    }
    let dir = TempDir::new("readme-tls");
    bash(&dir, &certificate_recipe());
    // What `openssl x509 -req` makes when no extensions are given: a v1 certificate, which
    // rustls (webpki) refuses. Signed by the same CA, so only its version is wrong.
    bash(
        &dir,
        "openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 \
           -subj /CN=old-style -keyout v1.key -out v1.csr 2>/dev/null
         openssl x509 -req -in v1.csr -CA ca.crt -CAkey ca.key -days 1 -out v1.crt 2>/dev/null",
    );
    let v1_text = bash(&dir, "openssl x509 -in v1.crt -noout -text");
    assert!(v1_text.contains("Version: 1 (0x0)"), "{v1_text}");

    let log = Arc::new(Mutex::new(String::new()));
    let mut served = Served::start(
        &[
            "--workers",
            "1",
            "--log-format",
            "json",
            "--tls-cert",
            &dir.file("server.crt"),
            "--tls-key",
            &dir.file("server.key"),
            "--tls-client-ca",
            &dir.file("ca.crt"),
        ],
        |command| {
            // Refused handshakes are logged at warn, with the reason.
            command.stderr(Stdio::piped());
        },
    );
    let stderr = served.child.stderr.take().unwrap();
    let sink = Arc::clone(&log);
    // Drained all along, so the server never blocks on a full pipe.
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let mut log = sink.lock().unwrap();
            log.push_str(&line);
            log.push('\n');
        }
    });
    let port = served.http_port;
    let ca = dir.read("ca.crt");

    // Readiness needs no client certificate; "localhost" checks the server's DNS SAN.
    let anonymous = client(&ca, None, port);
    let started = Instant::now();
    loop {
        let healthz = anonymous
            .get(format!("https://localhost:{port}/healthz"))
            .send()
            .await;
        if healthz.is_ok_and(|r| r.status() == StatusCode::OK) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the server never became ready over TLS:\n{}",
            log.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The recipe's client certificate gets a real answer; 127.0.0.1 checks the IP SAN.
    let reader = client(&ca, Some(pem_pair(&dir, "client.crt", "client.key")), port);
    let upload = Form::new().part(
        "file",
        Part::bytes(common::png(&["Signed by openssl"])).file_name("page.png"),
    );
    let answer = reader
        .post(format!("https://127.0.0.1:{port}/predict"))
        .multipart(upload)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    let answer: serde_json::Value = answer.json().await.unwrap();
    common::assert_text(answer["text"].as_str().unwrap(), "Signed by openssl", 1);

    // The certificate's URI SAN is the tenant: it labels the request in the metrics.
    let metrics = common::get_text(&anonymous, format!("https://localhost:{port}/metrics")).await;
    let tenant = r#"tenant="spiffe://example.org/ns/apps/sa/reader""#;
    assert!(
        metrics
            .lines()
            .any(|line| line.starts_with("tesserve_requests_total{")
                && line.contains(r#"endpoint="/predict""#)
                && line.contains(r#"outcome="ok""#)
                && line.contains(tenant)),
        "no ok /predict request counted for {tenant}:\n{metrics}"
    );

    // Without a certificate the same request is refused, but after the handshake.
    let refused = anonymous
        .get(format!("https://localhost:{port}/v2/models/ocr"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);

    // A v1 certificate from the same CA does not get through the handshake. rustls will not
    // even present one (reqwest refuses it as an identity), so curl, on OpenSSL, does.
    let v1 = Command::new("curl")
        .args(["--silent", "--show-error", "--max-time", "10"])
        .args(["--resolve", &format!("localhost:{port}:127.0.0.1")])
        .args(["--cacert", &dir.file("ca.crt")])
        .args(["--cert", &dir.file("v1.crt"), "--key", &dir.file("v1.key")])
        .args(["--write-out", "%{http_code}"])
        .arg(format!("https://localhost:{port}/v2/models/ocr"))
        .output()
        .expect("curl is installed");
    let v1_stdout = String::from_utf8_lossy(&v1.stdout);
    assert!(
        !v1.status.success() && !v1_stdout.starts_with('2'),
        "a v1 client certificate was served: {v1_stdout}"
    );
    // The server certificate (serverAuth only) is no client certificate either.
    let wrong_usage = client(&ca, Some(pem_pair(&dir, "server.crt", "server.key")), port);
    let outcome = wrong_usage
        .get(format!("https://localhost:{port}/v2/models/ocr"))
        .send()
        .await;
    assert!(outcome.is_err(), "a serverAuth-only certificate was served");

    // And the server says why: the version for the first (the word the README quotes), the
    // key usage for the second. The access log names the tenant, as the README says.
    let wanted = [
        "UnsupportedCertVersion",
        r#""reason":"unsupported_cert_version""#,
        "extended key usage for client authentication",
        r#""reason":"invalid_purpose""#,
        r#""tenant_id":"spiffe://example.org/ns/apps/sa/reader""#,
    ];
    let started = Instant::now();
    loop {
        let missing: Vec<&str> = {
            let log = log.lock().unwrap();
            wanted
                .iter()
                .copied()
                .filter(|text| !log.contains(text))
                .collect()
        };
        if missing.is_empty() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the server log lacks {missing:?}:\n{}",
            log.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
