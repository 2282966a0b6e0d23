//! Who is calling, and whether they may now: API keys (or, without keys, verified client
//! certificates) name tenants, and each tenant has its own token bucket, so one tenant's
//! burst never spends another's budget. One tower layer on both listeners; probes, metrics
//! and API descriptions stay open.

use std::{
    num::NonZeroU32,
    path::{Path, PathBuf},
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use axum::body::Body;
use futures::future::{BoxFuture, FutureExt};
use governor::{clock::Clock, DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota};
use http::{header, HeaderValue, Request, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tower::{Layer, Service};

use crate::{
    failure::{self, Failure, Reason},
    identity::{Peer, Tenant, ANONYMOUS},
};
/// Beyond this many remembered anonymous tenants, idle buckets are forgotten.
const MAX_REMEMBERED_TENANTS: usize = 10_000;

/// Paths that never need a key and are never rate limited: probes, metrics, descriptions.
/// The server derives them from what it serves (the OpenAPI document's `security(())`
/// operations, the gRPC health and reflection services); this layer only matches them.
#[derive(Clone, Debug, Default)]
pub struct OpenPaths {
    /// `/v2/models/{model}/ready`: a `{...}` segment matches any one segment.
    templates: Vec<Vec<String>>,
}

impl OpenPaths {
    pub fn new(paths: impl IntoIterator<Item = String>) -> OpenPaths {
        let templates = paths
            .into_iter()
            .map(|path| path.split('/').map(str::to_owned).collect())
            .collect();
        OpenPaths { templates }
    }

    pub fn contains(&self, path: &str) -> bool {
        let segments: Vec<&str> = path.split('/').collect();
        self.templates.iter().any(|template| {
            template.len() == segments.len()
                && template.iter().zip(&segments).all(|(want, got)| {
                    want == got || (want.starts_with('{') && want.ends_with('}') && !got.is_empty())
                })
        })
    }
}

/// A token bucket: `rps` tokens a second, at most `burst` saved up.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Limit {
    pub rps: f64,
    pub burst: u32,
}

impl Limit {
    fn quota(self) -> Option<Quota> {
        let period = Duration::try_from_secs_f64(1.0 / self.rps).ok()?;
        let burst = NonZeroU32::new(self.burst.max(1))?;
        Some(Quota::with_period(period)?.allow_burst(burst))
    }
}

/// One line of the keys file: `tenant:<hex SHA-256 of the key>[:rps[:burst]]`.
#[derive(Clone, Debug, PartialEq)]
pub struct KeyEntry {
    pub tenant: String,
    pub key_sha256: [u8; 32],
    pub limit: Option<Limit>,
}

#[derive(Debug, thiserror::Error)]
pub enum KeysFileError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}: {reason}")]
    Line {
        path: PathBuf,
        line: usize,
        reason: String,
    },
}

/// Reads an API keys file. Keys are stored only as SHA-256 digests.
pub fn read_keys_file(path: &Path) -> Result<Vec<KeyEntry>, KeysFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| KeysFileError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mut entries = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let entry = parse_key_line(line).map_err(|reason| KeysFileError::Line {
            path: path.to_owned(),
            line: index + 1,
            reason,
        })?;
        entries.push(entry);
    }
    Ok(entries)
}

fn parse_key_line(line: &str) -> Result<KeyEntry, String> {
    let mut fields = line.split(':').map(str::trim);
    let tenant = fields
        .next()
        .filter(|t| !t.is_empty())
        .ok_or("missing tenant")?;
    let mut key_sha256 = [0u8; 32];
    hex::decode_to_slice(fields.next().unwrap_or_default(), &mut key_sha256)
        .map_err(|_| "the key must be 64 hex digits of its SHA-256".to_owned())?;
    let rps = fields
        .next()
        .map(|v| {
            v.parse::<f64>()
                .ok()
                .filter(|r| *r > 0.0)
                .ok_or("rps must be a positive number")
        })
        .transpose()?;
    let burst = fields
        .next()
        .map(|v| v.parse::<u32>().map_err(|_| "burst must be a whole number"))
        .transpose()?;
    if fields.next().is_some() {
        return Err("too many fields; expected tenant:sha256[:rps[:burst]]".into());
    }
    let limit = rps.map(|rps| Limit {
        rps,
        burst: burst.unwrap_or(rps.ceil() as u32),
    });
    Ok(KeyEntry {
        tenant: tenant.to_owned(),
        key_sha256,
        limit,
    })
}

/// What the layer enforces.
#[derive(Clone, Debug, Default)]
pub struct AuthConfig {
    /// `None`: no keys required; the tenant is `x-tenant-id` or `anonymous`.
    pub keys: Option<Vec<KeyEntry>>,
    /// The bucket of every tenant without a limit of its own; `None`: unlimited.
    pub default_limit: Option<Limit>,
    /// Mutual TLS: callers must have presented a verified client certificate. Without API
    /// keys, the certificate's identity is the tenant.
    pub client_certificates: bool,
}

struct Policy {
    open: OpenPaths,
    client_certificates: bool,
    keys: Option<Vec<(KeyEntry, Option<DefaultDirectRateLimiter>)>>,
    default: Option<DefaultKeyedRateLimiter<String>>,
}

#[derive(Clone)]
pub struct AuthLayer {
    policy: Arc<Policy>,
}

impl AuthLayer {
    pub fn new(config: AuthConfig, open: OpenPaths) -> AuthLayer {
        let keys = config.keys.map(|entries| {
            entries
                .into_iter()
                .map(|entry| {
                    let own = entry
                        .limit
                        .and_then(Limit::quota)
                        .map(governor::RateLimiter::direct);
                    (entry, own)
                })
                .collect()
        });
        let default = config
            .default_limit
            .and_then(Limit::quota)
            .map(governor::RateLimiter::keyed);
        AuthLayer {
            policy: Arc::new(Policy {
                open,
                client_certificates: config.client_certificates,
                keys,
                default,
            }),
        }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Auth<S> {
        Auth {
            inner,
            policy: self.policy.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Auth<S> {
    inner: S,
    policy: Arc<Policy>,
}

/// Why a request was refused.
enum Refusal {
    NoClientCertificate,
    MissingKey,
    WrongKey,
    RateLimited {
        tenant: Tenant,
        retry_after: Duration,
    },
}

impl Policy {
    /// The tenant of the request, or why it may not proceed now.
    fn admit<B>(&self, request: &Request<B>) -> Result<Tenant, Refusal> {
        let headers = request.headers();
        let identity = verified_identity(request);
        if self.client_certificates && identity.is_none() {
            return Err(Refusal::NoClientCertificate);
        }
        let (tenant, own_limiter) = match &self.keys {
            Some(keys) => {
                let presented = presented_key(headers).ok_or(Refusal::MissingKey)?;
                let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
                // Every entry is compared, in constant time, whichever matches.
                let mut found = None;
                for (entry, limiter) in keys {
                    if bool::from(entry.key_sha256.ct_eq(&digest)) {
                        found = Some((entry.tenant.clone(), limiter.as_ref()));
                    }
                }
                found.ok_or(Refusal::WrongKey)?
            }
            None => {
                let named = headers
                    .get("x-tenant-id")
                    .and_then(|v| v.to_str().ok())
                    .filter(|t| !t.is_empty());
                (identity.or(named).unwrap_or(ANONYMOUS).to_owned(), None)
            }
        };
        let checked = match (own_limiter, &self.default) {
            (Some(own), _) => own.check(),
            (None, Some(default)) => {
                if default.len() > MAX_REMEMBERED_TENANTS {
                    default.retain_recent();
                }
                default.check_key(&tenant)
            }
            (None, None) => Ok(()),
        };
        let tenant = Tenant {
            name: tenant,
            authenticated: self.keys.is_some() || self.client_certificates,
        };
        match checked {
            Ok(()) => Ok(tenant),
            Err(not_until) => Err(Refusal::RateLimited {
                retry_after: not_until
                    .wait_time_from(governor::clock::DefaultClock::default().now()),
                tenant,
            }),
        }
    }
}

/// `authorization: Bearer <key>` or `x-api-key: <key>`.
fn presented_key(headers: &http::HeaderMap) -> Option<&str> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        });
    bearer
        .or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()))
        .map(str::trim)
        .filter(|k| !k.is_empty())
}

impl<S, B> Service<Request<B>> for Auth<S>
where
    S: Service<Request<B>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let tenant = if self.policy.open.contains(request.uri().path()) {
            // Open to all, but a verified certificate still says who called, for the log.
            verified_identity(&request).map(|name| Tenant {
                name: name.to_owned(),
                authenticated: true,
            })
        } else {
            match self.policy.admit(&request) {
                Ok(tenant) => {
                    // Downstream sees the tenant the key belongs to, not a claim.
                    if let Ok(value) = HeaderValue::from_str(&tenant.name) {
                        request.headers_mut().insert("x-tenant-id", value);
                    }
                    Some(tenant)
                }
                Err(refusal) => {
                    let response = refuse(refusal, failure::is_grpc(&request));
                    return async move { Ok(response) }.boxed();
                }
            }
        };
        // The service that was polled ready serves this call; a fresh clone waits for the next.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        async move {
            let mut response = inner.call(request).await?;
            if let Some(tenant) = tenant {
                response.extensions_mut().insert(tenant);
            }
            Ok(response)
        }
        .boxed()
    }
}

/// The identity of the verified client certificate the request's connection presented.
fn verified_identity<B>(request: &Request<B>) -> Option<&str> {
    request
        .extensions()
        .get::<Peer>()
        .and_then(|peer| peer.identity.as_deref())
}

fn refuse(refusal: Refusal, grpc: bool) -> Response<Body> {
    let failure = match refusal {
        Refusal::NoClientCertificate => Failure::new(
            Reason::Unauthenticated,
            "a client certificate is required (mutual TLS)",
        ),
        Refusal::MissingKey => Failure::new(
            Reason::Unauthenticated,
            "missing API key: send `authorization: Bearer <key>` or `x-api-key: <key>`",
        ),
        Refusal::WrongKey => Failure::new(Reason::Unauthenticated, "invalid API key"),
        Refusal::RateLimited {
            tenant,
            retry_after,
        } => {
            let message = format!(
                "rate limit of tenant '{}' exceeded; retry after {retry_after:.2?}",
                tenant.name
            );
            let mut response = Failure::new(Reason::RateLimited, message)
                .retry_after(retry_after)
                .respond(grpc);
            // The access log names whose budget was spent.
            response.extensions_mut().insert(tenant);
            return response;
        }
    };
    failure.respond(grpc)
}

/// The digest a keys file holds for `key`: `printf %s "$KEY" | sha256sum` gives the same.
pub fn key_digest(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_lines() {
        let digest = key_digest("secret");
        let entry = parse_key_line(&format!("acme:{digest}:2.5:10")).unwrap();
        assert_eq!(entry.tenant, "acme");
        assert_eq!(hex::encode(entry.key_sha256), digest);
        assert_eq!(
            entry.limit,
            Some(Limit {
                rps: 2.5,
                burst: 10
            })
        );
        let entry = parse_key_line(&format!("beta:{digest}:3")).unwrap();
        assert_eq!(entry.limit, Some(Limit { rps: 3.0, burst: 3 }));
        assert_eq!(
            parse_key_line(&format!("gamma:{digest}")).unwrap().limit,
            None
        );
        assert!(
            parse_key_line("acme:secret").is_err(),
            "keys are never stored in clear"
        );
        assert!(parse_key_line(&format!(":{digest}")).is_err());
        assert!(parse_key_line(&format!("acme:{digest}:-1")).is_err());
        assert!(parse_key_line(&format!("acme:{digest}:1:2:3")).is_err());
    }

    #[test]
    fn open_paths_match_templates_segment_by_segment() {
        let open = OpenPaths::new(
            [
                "/healthz",
                "/v2/models/{model}/ready",
                "/grpc.health.v1.Health/Check",
            ]
            .map(str::to_owned),
        );
        for path in [
            "/healthz",
            "/v2/models/ocr/ready",
            "/v2/models/anything/ready",
            "/grpc.health.v1.Health/Check",
        ] {
            assert!(open.contains(path), "{path}");
        }
        for path in [
            "/healthz/x",
            "/v2/models/ocr/infer",
            "/v2/models//ready",
            "/v2/models/a/b/ready",
            "/grpc.health.v1.Health/Watch",
            "/",
        ] {
            assert!(!open.contains(path), "{path}");
        }
    }
}
