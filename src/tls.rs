//! TLS for both listeners, and mutual TLS when a client CA is given. The certificate, key and
//! client CA are re-read on SIGHUP and every few seconds; a change takes effect for new
//! connections while open ones keep the keys they shook hands with, so cert-manager can
//! rotate them under a running server.
//!
//! With a client CA, a client that presents a certificate must present one the CA signed, or
//! the handshake fails. A client may present none: probes, metrics and API descriptions stay
//! reachable for kubelet and Prometheus, and every other request is refused as
//! UNAUTHENTICATED / 401 by the auth layer, which sees the [`crate::identity::Peer`] of each
//! request.
//!
//! Certificates are checked by webpki: X.509 v3 only (a v1 certificate fails with
//! `UnsupportedCertVersion`), and a client certificate that lists extended key usages must
//! list client authentication.

use std::{
    fmt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError, RwLock},
    time::Duration,
};

use metrics::{counter, gauge};
use rustls::{
    crypto::aws_lc_rs,
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer},
    server::WebPkiClientVerifier,
    CertificateError, RootCertStore, ServerConfig,
};
use tokio_rustls::TlsAcceptor;
use x509_parser::{extensions::GeneralName, prelude::FromDer};

use crate::telemetry::metrics::{TLS_CERT_EXPIRY, TLS_RELOADS};

/// How often the files are compared with what is loaded.
const WATCH_PERIOD: Duration = Duration::from_secs(5);

/// Where the server's TLS material lives.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Turns on client-certificate verification against this CA bundle.
    pub client_ca: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: no PEM certificate in it")]
    NoCertificate { path: PathBuf },
    #[error("{path}: no PEM private key in it ({reason})")]
    NoKey { path: PathBuf, reason: String },
    #[error("{path}: not a certificate the server can use: {reason}")]
    BadCertificate { path: PathBuf, reason: String },
    #[error("certificate and key do not belong together: {0}")]
    Mismatch(rustls::Error),
    #[error("client CA {path}: {reason}")]
    ClientCa { path: PathBuf, reason: String },
}

/// The live TLS configuration of the server.
#[derive(Clone)]
pub struct Tls {
    shared: Arc<Shared>,
}

struct Shared {
    files: TlsFiles,
    active: RwLock<Loaded>,
    /// What the files held when last read, loadable or not: a bad file is reported once,
    /// not every period.
    seen: Mutex<Material>,
}

/// A configuration in use, and when its certificate expires (Unix seconds).
struct Loaded {
    config: Arc<ServerConfig>,
    expiry: i64,
}

/// The bytes of the three files.
#[derive(Clone, PartialEq)]
struct Material {
    cert: Vec<u8>,
    key: Vec<u8>,
    client_ca: Option<Vec<u8>>,
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls")
            .field("files", &self.shared.files)
            .finish_non_exhaustive()
    }
}

impl Tls {
    /// Reads and checks the files: a server that cannot serve TLS must not start.
    pub fn load(files: TlsFiles) -> Result<Tls, TlsError> {
        let material = Material::read(&files)?;
        let loaded = build(&files, &material)?;
        Ok(Tls {
            shared: Arc::new(Shared {
                files,
                active: RwLock::new(loaded),
                seen: Mutex::new(material),
            }),
        })
    }

    pub fn verifies_clients(&self) -> bool {
        self.shared.files.client_ca.is_some()
    }

    /// Accepts with the configuration loaded now.
    pub fn acceptor(&self) -> TlsAcceptor {
        let active = self
            .shared
            .active
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        TlsAcceptor::from(active.config.clone())
    }

    /// Re-reads the files; `Ok(true)` if a new configuration is now in use. Unchanged files
    /// are loaded again only when `forced`.
    pub fn reload(&self, forced: bool) -> Result<bool, TlsError> {
        let material = Material::read(&self.shared.files)?;
        {
            let mut seen = self
                .shared
                .seen
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if *seen == material && !forced {
                return Ok(false);
            }
            *seen = material.clone();
        }
        let loaded = build(&self.shared.files, &material)?;
        *self
            .shared
            .active
            .write()
            .unwrap_or_else(PoisonError::into_inner) = loaded;
        Ok(true)
    }

    fn export_expiry(&self) {
        let active = self
            .shared
            .active
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        gauge!(TLS_CERT_EXPIRY).set(active.expiry as f64);
    }

    /// Reloads on SIGHUP and whenever the files change, until the task is dropped.
    pub async fn follow_files(self) {
        use tokio::signal::unix::{signal, SignalKind};

        self.export_expiry();
        let mut hangups = signal(SignalKind::hangup()).ok();
        let mut period = tokio::time::interval(WATCH_PERIOD);
        loop {
            let hangup = async {
                match hangups.as_mut() {
                    Some(hangups) => hangups.recv().await,
                    None => std::future::pending().await,
                }
            };
            let forced = tokio::select! {
                _ = hangup => true,
                _ = period.tick() => false,
            };
            // SIGHUP reloads even unchanged files: the operator asked for it.
            match self.reload(forced) {
                Ok(false) => {}
                Ok(true) => {
                    self.export_expiry();
                    counter!(TLS_RELOADS, "outcome" => "ok").increment(1);
                    tracing::info!(cert = %self.shared.files.cert.display(), "TLS certificates reloaded");
                }
                Err(error) => {
                    counter!(TLS_RELOADS, "outcome" => "error").increment(1);
                    tracing::warn!(%error, "TLS certificates not reloaded; still serving the previous ones");
                }
            }
        }
    }
}

impl Material {
    fn read(files: &TlsFiles) -> Result<Material, TlsError> {
        let read = |path: &Path| {
            std::fs::read(path).map_err(|source| TlsError::Read {
                path: path.to_owned(),
                source,
            })
        };
        Ok(Material {
            cert: read(&files.cert)?,
            key: read(&files.key)?,
            client_ca: files.client_ca.as_deref().map(read).transpose()?,
        })
    }
}

fn certificates(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| TlsError::BadCertificate {
            path: path.to_owned(),
            reason: error.to_string(),
        })?;
    match certs.is_empty() {
        true => Err(TlsError::NoCertificate {
            path: path.to_owned(),
        }),
        false => Ok(certs),
    }
}

fn build(files: &TlsFiles, material: &Material) -> Result<Loaded, TlsError> {
    let provider = Arc::new(aws_lc_rs::default_provider());
    let chain = certificates(&files.cert, &material.cert)?;
    let key = PrivateKeyDer::from_pem_slice(&material.key).map_err(|error| TlsError::NoKey {
        path: files.key.clone(),
        reason: error.to_string(),
    })?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Mismatch)?;
    let builder = match (&files.client_ca, &material.client_ca) {
        (Some(path), Some(pem)) => {
            let client_ca = |reason: String| TlsError::ClientCa {
                path: path.clone(),
                reason,
            };
            let mut roots = RootCertStore::empty();
            for cert in certificates(path, pem)? {
                roots.add(cert).map_err(|e| client_ca(e.to_string()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                .allow_unauthenticated()
                .build()
                .map_err(|e| client_ca(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        _ => builder.with_no_client_auth(),
    };
    let expiry = not_after(&chain[0]).ok_or_else(|| TlsError::BadCertificate {
        path: files.cert.clone(),
        reason: "not an X.509 certificate".into(),
    })?;
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(TlsError::Mismatch)?;
    // HTTP/2 first: gRPC needs it; the REST port also speaks HTTP/1.1.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Loaded {
        config: Arc::new(config),
        expiry,
    })
}

/// When the certificate expires, in seconds since the Unix epoch.
fn not_after(cert: &CertificateDer<'_>) -> Option<i64> {
    let (_, parsed) = x509_parser::certificate::X509Certificate::from_der(cert).ok()?;
    Some(parsed.validity().not_after.timestamp())
}

/// Who a (verified) client certificate names.
pub fn identity(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::certificate::X509Certificate::from_der(cert).ok()?;
    let alternative = parsed.subject_alternative_name().ok().flatten();
    let named = alternative.iter().flat_map(|san| &san.value.general_names);
    let by_preference = named
        .filter_map(|name| match name {
            GeneralName::URI(uri) => Some((0, *uri)),
            GeneralName::DNSName(dns) => Some((1, *dns)),
            GeneralName::RFC822Name(email) => Some((2, *email)),
            _ => None,
        })
        .min_by_key(|(rank, _)| *rank)
        .map(|(_, name)| name.to_owned());
    by_preference.or_else(|| {
        parsed
            .subject()
            .iter_common_name()
            .find_map(|cn| cn.as_str().ok().map(str::to_owned))
    })
}

/// A client configuration that trusts exactly the certificate in `cert` (the first of the PEM
/// file the server itself serves): what `tesserve healthcheck` needs to talk to its own server
/// over TLS without knowing which CA signed it, and without trusting anything else.
pub fn pinned_client(cert: &Path) -> Result<rustls::ClientConfig, TlsError> {
    let pem = std::fs::read(cert).map_err(|source| TlsError::Read {
        path: cert.to_owned(),
        source,
    })?;
    let pinned = certificates(cert, &pem)?.swap_remove(0);
    let provider = Arc::new(aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Mismatch)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Pinned { pinned, provider }))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// Accepts one certificate, byte for byte, and checks the handshake was signed by its key.
#[derive(Debug)]
struct Pinned {
    pinned: CertificateDer<'static>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        match end_entity.as_ref() == self.pinned.as_ref() {
            true => Ok(rustls::client::danger::ServerCertVerified::assertion()),
            false => Err(rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer,
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Why a handshake failed, as a label from a small fixed set: what an operator needs to tell
/// a wrong certificate from a network fault, and never text the client chose.
pub fn handshake_failure(error: &std::io::Error) -> &'static str {
    let Some(tls) = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    else {
        return match error.kind() {
            std::io::ErrorKind::InvalidData => "protocol",
            _ => "io",
        };
    };
    match tls {
        rustls::Error::InvalidCertificate(certificate) => match certificate {
            CertificateError::UnknownIssuer => "unknown_issuer",
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => "expired",
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "not_valid_yet"
            }
            CertificateError::Revoked => "revoked",
            CertificateError::BadEncoding => "bad_encoding",
            CertificateError::BadSignature => "bad_signature",
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
                "invalid_purpose"
            }
            CertificateError::Other(other) => match other.0.downcast_ref::<webpki::Error>() {
                Some(webpki::Error::UnsupportedCertVersion) => "unsupported_cert_version",
                _ => "bad_certificate",
            },
            _ => "bad_certificate",
        },
        rustls::Error::NoCertificatesPresented => "no_certificate",
        // The client refused ours (an unknown CA, a wrong name).
        rustls::Error::AlertReceived(_) => "refused_by_client",
        rustls::Error::InvalidMessage(_)
        | rustls::Error::InappropriateMessage { .. }
        | rustls::Error::InappropriateHandshakeMessage { .. }
        | rustls::Error::PeerIncompatible(_)
        | rustls::Error::PeerMisbehaved(_)
        | rustls::Error::NoApplicationProtocol => "protocol",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DnType, KeyPair, SanType};

    fn cert(names: Vec<SanType>, common_name: &str) -> CertificateDer<'static> {
        let mut params = CertificateParams::default();
        params.subject_alt_names = names;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        let key = KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().clone()
    }

    #[test]
    fn identity_prefers_uri_then_dns_then_email_then_common_name() {
        let spiffe = "spiffe://cluster.local/ns/apps/sa/reader";
        let all = vec![
            SanType::Rfc822Name("ops@example.com".try_into().unwrap()),
            SanType::DnsName("reader.example.com".try_into().unwrap()),
            SanType::URI(spiffe.try_into().unwrap()),
        ];
        assert_eq!(identity(&cert(all, "cn")).as_deref(), Some(spiffe));
        let dns = vec![
            SanType::Rfc822Name("ops@example.com".try_into().unwrap()),
            SanType::DnsName("reader.example.com".try_into().unwrap()),
        ];
        assert_eq!(
            identity(&cert(dns, "cn")).as_deref(),
            Some("reader.example.com")
        );
        assert_eq!(
            identity(&cert(vec![], "batch-job")).as_deref(),
            Some("batch-job")
        );
    }
}
