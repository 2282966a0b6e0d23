//! The server under test: `tesserve serve` as a child process on free loopback ports.

use std::{
    net::TcpListener,
    path::Path,
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use crate::Error;

pub struct Server {
    child: Child,
    pub grpc_port: u16,
    pub http_port: u16,
    /// From spawning the process to the first ready answer.
    pub startup: Duration,
    http: reqwest::blocking::Client,
}

/// Totals of the server's recognition-time histogram.
pub struct Recognition {
    seconds: f64,
    images: f64,
}

impl Recognition {
    /// Mean seconds inside Tesseract per image between `earlier` and now.
    pub fn since(&self, earlier: &Recognition) -> f64 {
        (self.seconds - earlier.seconds) / (self.images - earlier.images).max(1.0)
    }
}

fn free_port() -> Result<u16, Error> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Server {
    pub fn start(bin: &Path, workers: usize, flags: &[&str]) -> Result<Server, Error> {
        let (grpc_port, http_port) = (free_port()?, free_port()?);
        let started = Instant::now();
        let child = Command::new(bin.join("tesserve"))
            .args(["serve", "--bind", "127.0.0.1"])
            .args(["--grpc-port", &grpc_port.to_string()])
            .args(["--http-port", &http_port.to_string()])
            .args(["--workers", &workers.to_string()])
            .args(flags)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let mut server = Server {
            child,
            grpc_port,
            http_port,
            startup: Duration::ZERO,
            // A whole document is one request: longer than the blocking client's 30 s default.
            http: reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(600))
                .build()?,
        };
        let ready = format!("http://127.0.0.1:{http_port}/v2/health/ready");
        while !server
            .http
            .get(&ready)
            .send()
            .is_ok_and(|r| r.status().is_success())
        {
            if started.elapsed() > Duration::from_secs(60) {
                return Err("the server was not ready within 60 s".into());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        server.startup = started.elapsed();
        Ok(server)
    }

    /// Resident memory now, in MiB.
    pub fn rss_mib(&self) -> f64 {
        rss_mib(self.child.id())
    }

    /// The server's `/predict` answer for `image`.
    fn predict(&self, image: &[u8]) -> Result<serde_json::Value, Error> {
        let url = format!("http://127.0.0.1:{}/predict", self.http_port);
        let part = reqwest::blocking::multipart::Part::bytes(image.to_vec()).file_name("upload");
        let form = reqwest::blocking::multipart::Form::new().part("file", part);
        answer(self.http.post(url).multipart(form).send()?)
    }

    /// The server's OIP REST v2 answer to `body`.
    pub fn infer(&self, body: &serde_json::Value) -> Result<serde_json::Value, Error> {
        let url = format!("http://127.0.0.1:{}/v2/models/ocr/infer", self.http_port);
        answer(self.http.post(url).json(body).send()?)
    }

    /// The text the server reads in `image`, over REST.
    pub fn read(&self, image: &[u8]) -> Result<String, Error> {
        let reply = self.predict(image)?;
        reply["text"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| format!("no text in {reply}").into())
    }

    pub fn recognition(&self) -> Result<Recognition, Error> {
        let url = format!("http://127.0.0.1:{}/metrics", self.http_port);
        let text = self.http.get(url).send()?.text()?;
        let value = |name: &str| {
            text.lines()
                .find(|line| line.starts_with(name))
                .and_then(|line| line.rsplit(' ').next())
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        Ok(Recognition {
            seconds: value("tesserve_recognition_duration_seconds_sum"),
            images: value("tesserve_recognition_duration_seconds_count"),
        })
    }

    /// Runs `work` while sampling the server's memory; its result and the peak in MiB.
    pub fn while_sampling_rss<T>(
        &self,
        work: impl FnOnce() -> Result<T, Error>,
    ) -> Result<(T, f64), Error> {
        let done = Arc::new(AtomicBool::new(false));
        let pid = self.child.id();
        let sampler = {
            let done = done.clone();
            std::thread::spawn(move || {
                let mut peak = 0.0f64;
                while !done.load(Ordering::Relaxed) {
                    peak = peak.max(rss_mib(pid));
                    std::thread::sleep(Duration::from_millis(100));
                }
                peak
            })
        };
        let result = work();
        done.store(true, Ordering::Relaxed);
        let peak = sampler.join().unwrap_or(f64::NAN);
        Ok((result?, peak))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kib| kib.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

fn answer(response: reqwest::blocking::Response) -> Result<serde_json::Value, Error> {
    let (status, url) = (response.status(), response.url().path().to_owned());
    let reply: serde_json::Value = response.json()?;
    match status.is_success() {
        true => Ok(reply),
        false => Err(format!("{url} answered {status}: {reply}").into()),
    }
}
