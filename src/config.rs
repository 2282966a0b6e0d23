//! Command line and environment configuration, in two stages: clap parses raw arguments
//! (every option also a `TESSERVE_*` environment variable), then `validate` turns them into the
//! config types the rest of the program uses. Nothing downstream sees an unvalidated value.

use std::{
    net::{IpAddr, SocketAddr},
    num::NonZeroUsize,
    path::{Path, PathBuf},
    time::Duration,
};

use clap::{Args, Parser, Subcommand, ValueEnum};

use tokio::sync::Semaphore;

use crate::{
    auth::{read_keys_file, AuthConfig, KeysFileError, Limit},
    model::{Admission, OSD_LANG},
    ocr::{document::MAX_DPI, DocumentLimits, Dpi, ImageLimits, Languages, OcrOptions, PoolConfig},
    tls::{Tls, TlsError, TlsFiles},
};
pub use crate::{
    model::DEFAULT_MODEL_NAME,
    oip::rest::RestConfig,
    server::{ConnectionLimits, ServeConfig, Shutdown},
    telemetry::LogFormat,
};

mod reference;

pub use reference::reference;

pub const DEFAULT_BIND: &str = "0.0.0.0";
/// KServe's convention for the gRPC (h2c) port.
pub const DEFAULT_GRPC_PORT: u16 = 8081;
/// KServe's convention for the REST port.
pub const DEFAULT_HTTP_PORT: u16 = 8080;
pub const DEFAULT_LANG: &str = "eng";
/// Room for a few large scans in one request; tonic's own default is 4 MiB.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 64 << 20;
pub const DEFAULT_MAX_IMAGE_BYTES: usize = 32 << 20;
/// About an A3 page at 600 dpi. Layout analysis time grows with pixels, so this bounds it.
pub const DEFAULT_MAX_IMAGE_PIXELS: u64 = 50_000_000;
/// The most `--max-image-pixels` may be: Tesseract addresses an RGBA page with C ints.
pub const MAX_IMAGE_PIXELS_CEILING: u64 = (i32::MAX / 4) as u64;
/// Pages one element of a synchronous request may have: a long report, not an archive.
pub const DEFAULT_MAX_PAGES: &str = "100";
/// PDF render resolutions above this buy pixels, not accuracy.
pub const DEFAULT_MAX_RENDER_DPI: u32 = 600;
/// The orientation confidence `rotate=auto` turns a page at. Measured on rendered pages: a
/// turned page of text scores 5 to 30, an upright one's wrong guesses stay under 1.
pub const DEFAULT_ROTATE_THRESHOLD: f32 = 2.0;
pub const DEFAULT_QUEUE_CAPACITY: &str = "128";
pub const DEFAULT_ENGINES_PER_WORKER: &str = "4";
pub const DEFAULT_HEALTHCHECK_TIMEOUT_SECS: u64 = 3;
/// Files one multipart upload may carry.
pub const DEFAULT_MAX_UPLOAD_FILES: usize = 16;
/// Inference requests in flight at once; beyond this they are shed (UNAVAILABLE / 503).
pub const DEFAULT_MAX_CONCURRENT_REQUESTS: usize = 512;
/// The longest any inference may take, whatever the client asks.
pub const DEFAULT_REQUEST_TIMEOUT_SECS: f64 = 120.0;
/// How long a client may take to send a request's headers (slow-client protection).
pub const DEFAULT_HEADER_READ_TIMEOUT_SECS: f64 = 10.0;
/// How long a request body may go without sending a byte (slow-client protection).
pub const DEFAULT_BODY_READ_TIMEOUT_SECS: f64 = 30.0;
/// HTTP/2 streams one connection may have open at once.
pub const DEFAULT_MAX_CONCURRENT_STREAMS: u32 = 128;
/// After SIGTERM, how long the listeners keep accepting while load balancers catch up.
pub const DEFAULT_SHUTDOWN_GRACE_SECS: f64 = 5.0;
/// After SIGTERM, how long in-flight work may take before the process exits anyway.
pub const DEFAULT_SHUTDOWN_TIMEOUT_SECS: f64 = 30.0;
/// Log filter when `RUST_LOG` is not set.
pub const DEFAULT_LOG_FILTER: &str = "info";
/// The standard OpenTelemetry variable naming the trace collector; no traces when unset.
pub const OTLP_ENDPOINT_VAR: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";

/// A variable read by a library underneath rather than by clap, listed here so that the
/// configuration reference (`reference()`, the README) names every knob in one place.
#[derive(Debug)]
pub struct EnvironmentVariable {
    pub name: &'static str,
    /// Markdown: what happens when it is not set.
    pub default: &'static str,
    /// Markdown.
    pub meaning: &'static str,
}

pub const ENVIRONMENT_ONLY: &[EnvironmentVariable] = &[
    EnvironmentVariable {
        name: "RUST_LOG",
        default: "`info`",
        meaning: "Log filter (`tracing` directives), e.g. `info,tesserve::listener=debug` to see \
            failed TLS handshakes",
    },
    EnvironmentVariable {
        name: OTLP_ENDPOINT_VAR,
        default: "unset (no traces)",
        meaning: "OTLP/gRPC collector to send traces to; the other standard `OTEL_*` \
            variables apply",
    },
];

/// Where Debian, Ubuntu and source installs put traineddata, searched in this order when
/// neither `--tessdata` nor `TESSDATA_PREFIX` is set.
pub const TESSDATA_SEARCH_PATH: &[&str] = &[
    "/usr/share/tesseract-ocr/5/tessdata",
    "/usr/share/tesseract-ocr/4.00/tessdata",
    "/usr/share/tessdata",
    "/usr/local/share/tessdata",
];

#[derive(Debug, Parser)]
#[command(
    name = "tesserve",
    version,
    about = "Tesseract OCR served over the KServe Open Inference Protocol",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Options of `serve`, which runs when no subcommand is given.
    #[command(flatten)]
    pub serve: ServeArgs,

    /// Log line format.
    #[arg(
        long,
        global = true,
        env = "TESSERVE_LOG_FORMAT",
        default_value = "text"
    )]
    pub log_format: LogFormat,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the OIP gRPC API (the default).
    Serve(Box<ServeArgs>),
    /// Recognise image files once, through the same engine pool, and print their text.
    Ocr(OcrArgs),
    /// Exit 0 when the server on this machine reports ready (for container health checks).
    Healthcheck(HealthcheckArgs),
}

#[derive(Clone, Debug, Args)]
pub struct ServeArgs {
    /// Address both ports listen on.
    #[arg(long, env = "TESSERVE_BIND", default_value = DEFAULT_BIND)]
    pub bind: IpAddr,

    /// gRPC port (h2c, or TLS with `--tls-cert`); 0 picks a free one.
    #[arg(long = "grpc-port", alias = "grpc_port", env = "TESSERVE_GRPC_PORT", default_value_t = DEFAULT_GRPC_PORT)]
    pub grpc_port: u16,

    /// REST port, which serves gRPC too; 0 picks a free one.
    #[arg(long = "http-port", alias = "http_port", env = "TESSERVE_HTTP_PORT", default_value_t = DEFAULT_HTTP_PORT)]
    pub http_port: u16,

    /// Name the model is served under.
    #[arg(long = "model-name", alias = "model_name", env = "TESSERVE_MODEL_NAME", default_value = DEFAULT_MODEL_NAME)]
    pub model_name: String,

    /// Largest gRPC message in or out, and largest REST request body, in bytes.
    #[arg(long, env = "TESSERVE_MAX_MESSAGE_BYTES", default_value_t = DEFAULT_MAX_MESSAGE_BYTES)]
    pub max_message_bytes: usize,

    /// Files one multipart upload (`/predict`, `/gateway/ocr`) may carry.
    #[arg(long, env = "TESSERVE_MAX_UPLOAD_FILES", default_value_t = DEFAULT_MAX_UPLOAD_FILES)]
    pub max_upload_files: usize,

    /// Inferences running or waiting at once; more are refused at once (shed) with
    /// `UNAVAILABLE` / 503.
    #[arg(long, env = "TESSERVE_MAX_CONCURRENT_REQUESTS", default_value_t = DEFAULT_MAX_CONCURRENT_REQUESTS)]
    pub max_concurrent_requests: usize,

    /// Seconds any inference may take; caps the client's `grpc-timeout` /
    /// `x-request-timeout`.
    #[arg(long, env = "TESSERVE_REQUEST_TIMEOUT", default_value_t = DEFAULT_REQUEST_TIMEOUT_SECS)]
    pub request_timeout: f64,

    /// Seconds a client may take to send a request's headers before the connection is closed.
    #[arg(long, env = "TESSERVE_HEADER_READ_TIMEOUT", default_value_t = DEFAULT_HEADER_READ_TIMEOUT_SECS)]
    pub header_read_timeout: f64,

    /// Seconds a REST-port request body may go without sending a byte before it fails with
    /// 400.
    #[arg(long, env = "TESSERVE_BODY_READ_TIMEOUT", default_value_t = DEFAULT_BODY_READ_TIMEOUT_SECS)]
    pub body_read_timeout: f64,

    /// HTTP/2 streams one connection may have open at once (both ports).
    #[arg(long, env = "TESSERVE_MAX_CONCURRENT_STREAMS", default_value_t = DEFAULT_MAX_CONCURRENT_STREAMS)]
    pub max_concurrent_streams: u32,

    /// Seconds after SIGTERM during which new connections are still accepted (readiness is
    /// already false), so load balancers stop routing here before the listeners close.
    #[arg(long, env = "TESSERVE_SHUTDOWN_GRACE", default_value_t = DEFAULT_SHUTDOWN_GRACE_SECS)]
    pub shutdown_grace: f64,

    /// Seconds after the grace period that in-flight and queued requests may take to finish.
    #[arg(long, env = "TESSERVE_SHUTDOWN_TIMEOUT", default_value_t = DEFAULT_SHUTDOWN_TIMEOUT_SECS)]
    pub shutdown_timeout: f64,

    /// API keys, one line per tenant: `tenant:<hex SHA-256 of the key>[:rps[:burst]]`. When
    /// set, every request except probes, metrics and API descriptions needs a key. Default:
    /// none, and no request needs a key (with `--tls-client-ca`, a client certificate is still
    /// needed).
    #[arg(long, env = "TESSERVE_API_KEYS_FILE")]
    pub api_keys_file: Option<PathBuf>,

    /// Requests per second each tenant may make (token bucket); 0 means unlimited. A tenant's
    /// own rate in the keys file overrides it.
    #[arg(long, env = "TESSERVE_RATE_LIMIT_RPS", default_value_t = 0.0)]
    pub rate_limit_rps: f64,

    /// Requests a tenant may make at once above its rate (the bucket's size). Default: the
    /// rate, rounded up.
    #[arg(long, env = "TESSERVE_RATE_LIMIT_BURST")]
    pub rate_limit_burst: Option<u32>,

    /// Bytes of recognised results to keep, so the same image bytes with the same options
    /// and outputs are answered without running Tesseract again; 0 turns the cache off. See
    /// `tesserve_cache_lookups_total` and `tesserve_cache_bytes`.
    #[arg(long, env = "TESSERVE_CACHE_BYTES", default_value_t = 0)]
    pub cache_bytes: usize,

    /// PEM certificate chain: serve TLS on both ports, re-read on change and on SIGHUP.
    /// Default: none, plaintext (h2c for gRPC), as behind a mesh sidecar.
    #[arg(long, env = "TESSERVE_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of `--tls-cert`.
    #[arg(long, env = "TESSERVE_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// PEM CA bundle: clients must present a certificate it signed (mutual TLS) for anything
    /// but probes, metrics and API descriptions; the certificate names the caller. Default:
    /// none, and no client certificate is asked for.
    #[arg(long, env = "TESSERVE_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,

    /// Check the configuration (flags, environment and the files they name), print it and
    /// exit without serving: 0 if it would serve, 2 if not.
    #[arg(long)]
    pub check_config: bool,

    /// Hosts `/read_ocr` may fetch image URLs from, comma-separated. Default: none, and image
    /// URLs are refused.
    #[arg(long, env = "TESSERVE_ALLOW_URL_FETCH", value_delimiter = ',')]
    pub allow_url_fetch: Vec<String>,

    #[command(flatten)]
    pub engine: EngineArgs,
}

#[derive(Clone, Debug, Args)]
pub struct EngineArgs {
    /// Engine worker threads, each with its own Tesseract engine. Default: the CPUs available
    /// to the process, cgroup limits included.
    #[arg(long, env = "TESSERVE_WORKERS")]
    pub workers: Option<NonZeroUsize>,

    /// Images that may wait for an engine; beyond this, requests fail fast with `UNAVAILABLE`.
    #[arg(long, env = "TESSERVE_QUEUE_CAPACITY", default_value = DEFAULT_QUEUE_CAPACITY)]
    pub queue_capacity: NonZeroUsize,

    /// Language combinations each worker keeps loaded, one engine each; beyond this the
    /// least recently used is dropped.
    #[arg(long, env = "TESSERVE_ENGINES_PER_WORKER", default_value = DEFAULT_ENGINES_PER_WORKER)]
    pub engines_per_worker: NonZeroUsize,

    /// Directory holding `*.traineddata`. Default: `$TESSDATA_PREFIX`, then
    /// `/usr/share/tesseract-ocr/5/tessdata` and the other places Debian, Ubuntu and source
    /// installs use.
    #[arg(long, env = "TESSERVE_TESSDATA")]
    pub tessdata: Option<PathBuf>,

    /// Default recognition language(s), e.g. `eng` or `eng+deu`; preloaded on every worker.
    #[arg(long, env = "TESSERVE_LANG", default_value = DEFAULT_LANG)]
    pub lang: String,

    /// Whether one big page may be read on several engines at once.
    #[arg(long, env = "TESSERVE_SPLIT_PAGES", value_enum, default_value_t = SplitPages::Auto)]
    pub split_pages: SplitPages,

    /// Largest encoded image accepted, in bytes.
    #[arg(long, env = "TESSERVE_MAX_IMAGE_BYTES", default_value_t = DEFAULT_MAX_IMAGE_BYTES)]
    pub max_image_bytes: usize,

    /// Largest image accepted, in pixels (width × height); checked from the file header
    /// before decoding.
    #[arg(long, env = "TESSERVE_MAX_IMAGE_PIXELS", default_value_t = DEFAULT_MAX_IMAGE_PIXELS)]
    pub max_image_pixels: u64,

    /// Most pages a PDF or TIFF element may have; a longer one is refused before any page is
    /// read. (`pages` selects fewer, but the whole document still counts.)
    #[arg(long, env = "TESSERVE_MAX_PAGES", default_value = DEFAULT_MAX_PAGES)]
    pub max_pages: NonZeroUsize,

    /// Largest page of a document, in pixels as rendered (or as stored, for TIFF); checked
    /// from the page box and `render_dpi` before rendering.
    #[arg(long, env = "TESSERVE_MAX_PAGE_PIXELS", default_value_t = DEFAULT_MAX_IMAGE_PIXELS)]
    pub max_page_pixels: u64,

    /// Highest `render_dpi` a request may ask PDF pages to be rendered at (default 300).
    #[arg(long, env = "TESSERVE_MAX_RENDER_DPI", default_value_t = DEFAULT_MAX_RENDER_DPI)]
    pub max_render_dpi: u32,

    /// Orientation confidence from which `rotate=auto` turns a page.
    #[arg(long, env = "TESSERVE_ROTATE_THRESHOLD", default_value_t = DEFAULT_ROTATE_THRESHOLD)]
    pub rotate_threshold: f32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SplitPages {
    /// A page of 2 Mpx or more that arrives while engines are idle is cut between lines into
    /// strips of equal ink, only where the page is a single column (columns are never
    /// interleaved), and read on the idle engines at once (only for the text and confidence
    /// outputs, and page segmentation modes 1, 3, 4 and 6). A document's pages are read side by
    /// side instead: only its last page may be split.
    Auto,
    /// One engine per page.
    Off,
}

#[derive(Clone, Debug, Args)]
pub struct OcrArgs {
    /// Image, PDF or TIFF files to recognise.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,

    /// Print one JSON object per page (file, page, text, confidence, words) instead of plain
    /// text, whose pages are separated by form feeds.
    #[arg(long)]
    pub json: bool,

    /// Page segmentation mode, 0 to 13.
    #[arg(long)]
    pub psm: Option<i64>,

    /// Pages of each PDF or TIFF to read, e.g. `1-3,5`; all by default.
    #[arg(long)]
    pub pages: Option<String>,

    /// `off` or `auto`: turn each page upright first (needs osd.traineddata).
    #[arg(long)]
    pub rotate: Option<String>,

    /// Resolution PDF pages are rendered at (default 300).
    #[arg(long)]
    pub render_dpi: Option<i64>,

    #[command(flatten)]
    pub engine: EngineArgs,
}

#[derive(Clone, Debug, Args)]
pub struct HealthcheckArgs {
    /// Host of the server to ask.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: IpAddr,

    /// gRPC port of the server to ask.
    #[arg(long = "grpc-port", alias = "grpc_port", env = "TESSERVE_GRPC_PORT", default_value_t = DEFAULT_GRPC_PORT)]
    pub grpc_port: u16,

    /// Seconds to wait for the answer.
    #[arg(long, default_value_t = DEFAULT_HEALTHCHECK_TIMEOUT_SECS)]
    pub timeout: u64,

    /// The certificate the server serves (PEM), when it serves TLS: the check then speaks TLS
    /// and trusts exactly that certificate. It reads the server's own variable, so a
    /// container's HEALTHCHECK works unchanged when TLS is turned on. Default: plaintext.
    #[arg(long = "tls-cert", env = "TESSERVE_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
}

impl HealthcheckArgs {
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.host, self.grpc_port)
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("no tessdata directory found (looked in {searched}); install tesseract-ocr-eng or set --tessdata")]
    NoTessdata { searched: String },
    #[error("cannot read tessdata directory {path}: {source}")]
    Tessdata {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("--lang: {0}")]
    Lang(#[from] crate::ocr::LangError),
    #[error("--{name} must be greater than 0")]
    Zero { name: &'static str },
    #[error("--{name} must be at most {max}")]
    TooLarge { name: &'static str, max: u64 },
    #[error("--{name} must be from {min} to {max}")]
    Range {
        name: &'static str,
        min: u64,
        max: u64,
    },
    #[error("--{name} must be a number of seconds, not {value}")]
    Seconds { name: &'static str, value: f64 },
    #[error("--api-keys-file: {0}")]
    Keys(#[from] KeysFileError),
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
}

impl ServeArgs {
    pub fn validate(&self) -> Result<ServeConfig, ConfigError> {
        if self.max_message_bytes == 0 {
            return Err(ConfigError::Zero {
                name: "max-message-bytes",
            });
        }
        for (name, value) in [
            ("max-upload-files", self.max_upload_files),
            ("max-concurrent-requests", self.max_concurrent_requests),
        ] {
            if value == 0 {
                return Err(ConfigError::Zero { name });
            }
        }
        let seconds = |name: &'static str, value: f64| {
            Duration::try_from_secs_f64(value).map_err(|_| ConfigError::Seconds { name, value })
        };
        let request_timeout = seconds("request-timeout", self.request_timeout)?;
        if request_timeout.is_zero() {
            return Err(ConfigError::Zero {
                name: "request-timeout",
            });
        }
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(Tls::load(TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: self.tls_client_ca.clone(),
            })?),
            _ => None,
        };
        Ok(ServeConfig {
            grpc_addr: SocketAddr::new(self.bind, self.grpc_port),
            http_addr: SocketAddr::new(self.bind, self.http_port),
            model_name: self.model_name.clone(),
            max_message_bytes: self.max_message_bytes,
            cache_bytes: self.cache_bytes,
            admission: Admission {
                max_concurrent_requests: self.max_concurrent_requests.min(Semaphore::MAX_PERMITS),
                request_timeout: Some(request_timeout),
            },
            auth: AuthConfig {
                keys: self
                    .api_keys_file
                    .as_deref()
                    .map(read_keys_file)
                    .transpose()?,
                default_limit: (self.rate_limit_rps > 0.0).then(|| Limit {
                    rps: self.rate_limit_rps,
                    burst: self
                        .rate_limit_burst
                        .unwrap_or(self.rate_limit_rps.ceil() as u32),
                }),
                client_certificates: tls.as_ref().is_some_and(Tls::verifies_clients),
            },
            tls,
            connections: ConnectionLimits {
                header_read_timeout: seconds("header-read-timeout", self.header_read_timeout)?,
                body_read_timeout: seconds("body-read-timeout", self.body_read_timeout)?,
                max_concurrent_streams: self.max_concurrent_streams.max(1),
            },
            shutdown: Shutdown {
                grace: seconds("shutdown-grace", self.shutdown_grace)?,
                timeout: seconds("shutdown-timeout", self.shutdown_timeout)?,
            },
            rest: RestConfig {
                max_body_bytes: self.max_message_bytes,
                max_upload_files: self.max_upload_files,
                url_fetch_hosts: self
                    .allow_url_fetch
                    .iter()
                    .map(|host| host.trim().to_ascii_lowercase())
                    .filter(|host| !host.is_empty())
                    .collect(),
            },
            pool: self.engine.validate()?,
        })
    }
}

impl EngineArgs {
    pub fn validate(&self) -> Result<PoolConfig, ConfigError> {
        if self.max_image_bytes == 0 {
            return Err(ConfigError::Zero {
                name: "max-image-bytes",
            });
        }
        for (name, pixels) in [
            ("max-image-pixels", self.max_image_pixels),
            ("max-page-pixels", self.max_page_pixels),
        ] {
            if pixels == 0 {
                return Err(ConfigError::Zero { name });
            }
            if pixels > MAX_IMAGE_PIXELS_CEILING {
                return Err(ConfigError::TooLarge {
                    name,
                    max: MAX_IMAGE_PIXELS_CEILING,
                });
            }
        }
        let max_render_dpi = Dpi::new(self.max_render_dpi)
            .ok()
            .filter(|dpi| dpi.get() >= OcrOptions::MIN_DPI)
            .ok_or(ConfigError::Range {
                name: "max-render-dpi",
                min: OcrOptions::MIN_DPI.into(),
                max: MAX_DPI.into(),
            })?;
        if !(self.rotate_threshold.is_finite() && self.rotate_threshold >= 0.0) {
            return Err(ConfigError::Range {
                name: "rotate-threshold",
                min: 0,
                max: u64::from(u16::MAX),
            });
        }
        let tessdata = resolve_tessdata(
            self.tessdata.as_deref(),
            std::env::var_os("TESSDATA_PREFIX").map(PathBuf::from),
            TESSDATA_SEARCH_PATH,
        )?;
        let languages = Languages::scan(&tessdata).map_err(|source| ConfigError::Tessdata {
            path: tessdata.clone(),
            source,
        })?;
        let default_lang = languages.parse(&self.lang)?;
        let workers = self
            .workers
            .or_else(|| std::thread::available_parallelism().ok())
            .unwrap_or(NonZeroUsize::MIN);
        let limits = ImageLimits {
            max_bytes: self.max_image_bytes,
            max_pixels: self.max_image_pixels,
        };
        Ok(PoolConfig {
            workers,
            queue_capacity: self.queue_capacity,
            engines_per_worker: self.engines_per_worker,
            tessdata,
            default_lang,
            limits,
            documents: DocumentLimits::new(&limits, self.max_pages.get(), self.max_page_pixels),
            max_render_dpi,
            split_pages: self.split_pages == SplitPages::Auto,
            osd: languages.parse(OSD_LANG).ok(),
            rotate_threshold: self.rotate_threshold,
            languages,
        })
    }
}

/// The tessdata directory: `--tessdata` as given (an unreadable one fails when it is
/// scanned, naming it), else `TESSDATA_PREFIX` if it holds traineddata, else the first
/// directory of `search` that does. The environment and the search path are parameters so
/// tests can point them at directories of their own.
fn resolve_tessdata(
    flag: Option<&Path>,
    prefix: Option<PathBuf>,
    search: &[&str],
) -> Result<PathBuf, ConfigError> {
    if let Some(dir) = flag {
        return Ok(dir.to_owned());
    }
    let candidates = prefix.into_iter().chain(search.iter().map(PathBuf::from));
    let mut searched = Vec::new();
    for dir in candidates {
        if has_traineddata(&dir) {
            return Ok(dir);
        }
        searched.push(dir.display().to_string());
    }
    Err(ConfigError::NoTessdata {
        searched: searched.join(", "),
    })
}

fn has_traineddata(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries
            .flatten()
            .any(|e| e.path().extension().is_some_and(|ext| ext == "traineddata"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("tesserve").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn serve_is_the_default_with_kserve_defaults() {
        let cli = parse(&[]);
        assert!(cli.command.is_none());
        assert_eq!(cli.serve.grpc_port, 8081);
        assert_eq!(cli.serve.http_port, 8080);
        assert_eq!(cli.serve.model_name, "ocr");
        assert_eq!(cli.serve.max_message_bytes, 64 << 20);
        assert_eq!(cli.serve.engine.lang, "eng");
    }

    #[test]
    fn kserve_style_flags_are_accepted_in_both_forms() {
        let cli = parse(&[
            "--model_name=receipts",
            "--grpc_port",
            "9001",
            "--http_port=9000",
        ]);
        assert_eq!(cli.serve.model_name, "receipts");
        assert_eq!(cli.serve.grpc_port, 9001);
        assert_eq!(cli.serve.http_port, 9000);
    }

    #[test]
    fn subcommands_take_their_own_options() {
        let cli = parse(&["ocr", "--json", "--psm", "6", "a.png", "b.png"]);
        let Some(Command::Ocr(ocr)) = cli.command else {
            panic!("expected ocr")
        };
        assert!(ocr.json);
        assert_eq!(ocr.psm, Some(6));
        assert_eq!(ocr.files.len(), 2);
        let cli = parse(&["healthcheck", "--grpc-port", "9"]);
        assert!(matches!(cli.command, Some(Command::Healthcheck(h)) if h.grpc_port == 9));
    }

    #[test]
    fn zero_sizes_are_refused_before_anything_starts() {
        assert!(Cli::try_parse_from(["tesserve", "--workers", "0"]).is_err());
        assert!(Cli::try_parse_from(["tesserve", "--queue-capacity", "0"]).is_err());
        let cli = parse(&["--max-image-pixels", "0"]);
        assert!(matches!(
            cli.serve.validate(),
            Err(ConfigError::Zero {
                name: "max-image-pixels"
            })
        ));
    }

    /// A directory under the system temp dir holding the named (empty) files; removed when
    /// dropped.
    struct Tessdata(PathBuf);

    impl Tessdata {
        fn with(test: &str, files: &[&str]) -> Tessdata {
            let dir =
                std::env::temp_dir().join(format!("tesserve-config-{}-{test}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            for file in files {
                std::fs::write(dir.join(file), b"").unwrap();
            }
            Tessdata(dir)
        }

        fn path(&self) -> &Path {
            &self.0
        }

        fn str(&self) -> &str {
            self.0.to_str().unwrap()
        }
    }

    impl Drop for Tessdata {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn only_a_directory_with_traineddata_in_it_counts() {
        let empty = Tessdata::with("empty", &[]);
        let other_files =
            Tessdata::with("other-files", &["eng.txt", "traineddata", "eng.user-words"]);
        let eng = Tessdata::with("eng", &["eng.traineddata"]);
        assert!(!has_traineddata(empty.path()));
        assert!(!has_traineddata(other_files.path()));
        assert!(has_traineddata(eng.path()));
        assert!(!has_traineddata(&eng.path().join("missing")));
    }

    #[test]
    fn tessdata_flag_comes_before_tessdata_prefix_before_the_search_path() {
        let flag = Tessdata::with("flag", &["deu.traineddata"]);
        let prefix = Tessdata::with("prefix", &["eng.traineddata"]);
        let system = Tessdata::with("system", &["eng.traineddata"]);
        let search = [system.str()];
        let resolve = |flag: Option<&Path>, prefix: Option<&Path>| {
            resolve_tessdata(flag, prefix.map(Path::to_owned), &search).unwrap()
        };
        assert_eq!(resolve(Some(flag.path()), Some(prefix.path())), flag.path());
        assert_eq!(resolve(None, Some(prefix.path())), prefix.path());
        assert_eq!(resolve(None, None), system.path());
        // A prefix with nothing to read in it is passed over, as Tesseract would fail on it.
        let empty = Tessdata::with("empty-prefix", &[]);
        assert_eq!(resolve(None, Some(empty.path())), system.path());
    }

    #[test]
    fn tessdata_search_names_every_place_it_looked() {
        let empty = Tessdata::with("searched", &["eng.txt"]);
        let search = ["/nonexistent/tessdata/a", "/nonexistent/tessdata/b"];
        match resolve_tessdata(None, Some(empty.path().to_owned()), &search) {
            Err(ConfigError::NoTessdata { searched }) => assert_eq!(
                searched,
                format!(
                    "{}, /nonexistent/tessdata/a, /nonexistent/tessdata/b",
                    empty.str()
                )
            ),
            other => panic!("expected NoTessdata, got {other:?}"),
        }
    }

    #[test]
    fn the_languages_come_from_the_chosen_tessdata() {
        let dir = Tessdata::with(
            "languages",
            &["eng.traineddata", "osd.traineddata", "eng.txt"],
        );
        let pool = parse(&["--tessdata", dir.str(), "--lang", "eng"])
            .serve
            .engine
            .validate()
            .unwrap();
        assert_eq!(pool.tessdata, dir.path());
        assert_eq!(pool.languages.iter().collect::<Vec<_>>(), ["eng", "osd"]);
        assert_eq!(pool.default_lang.as_str(), "eng");
    }

    #[test]
    fn a_default_language_not_in_tessdata_is_refused_naming_what_is() {
        let dir = Tessdata::with("missing-lang", &["eng.traineddata", "osd.traineddata"]);
        let error = parse(&["--tessdata", dir.str(), "--lang", "eng+deu"])
            .serve
            .engine
            .validate()
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "--lang: language 'deu' is not installed (installed: eng, osd)"
        );
    }

    #[test]
    fn an_unreadable_tessdata_flag_is_refused_naming_it() {
        let error = parse(&["--tessdata", "/nonexistent/tessdata"])
            .serve
            .engine
            .validate()
            .unwrap_err();
        assert!(
            matches!(&error, ConfigError::Tessdata { path, .. } if path == Path::new("/nonexistent/tessdata")),
            "{error}"
        );
    }
}
