//! The real `tesserve` binary as a child process on free loopback ports.

use std::{
    net::TcpListener,
    process::{Child, Command, ExitStatus, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

pub const BIN: &str = env!("CARGO_BIN_EXE_tesserve");

pub fn tesserve(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `tesserve serve` in a child process, killed if the test fails.
pub struct Served {
    pub child: Child,
    pub grpc_port: u16,
    pub http_port: u16,
}

impl Served {
    /// Starts `tesserve serve ARGS` on 127.0.0.1; `configure` may set the environment or
    /// capture stderr (which is discarded otherwise).
    pub fn start(args: &[&str], configure: impl FnOnce(&mut Command)) -> Served {
        let (grpc_port, http_port) = (free_port(), free_port());
        let mut command = Command::new(BIN);
        command
            .args(["serve", "--bind", "127.0.0.1"])
            .args(["--grpc-port", &grpc_port.to_string()])
            .args(["--http-port", &http_port.to_string()])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        configure(&mut command);
        Served {
            child: command.spawn().unwrap(),
            grpc_port,
            http_port,
        }
    }

    pub fn healthcheck(&self) -> Output {
        let port = self.grpc_port.to_string();
        tesserve(&["healthcheck", "--grpc-port", &port, "--timeout", "2"])
    }

    pub fn wait_ready(&self) {
        let started = Instant::now();
        while !self.healthcheck().status.success() {
            let waited = started.elapsed();
            assert!(
                waited < Duration::from_secs(30),
                "server never became ready"
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn sigterm(&self) {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    }

    /// Waits (boundedly) for the process to exit.
    pub fn wait(&mut self) -> ExitStatus {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            let waited = started.elapsed();
            assert!(waited < Duration::from_secs(30), "no exit after SIGTERM");
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
