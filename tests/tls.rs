//! TLS and mutual TLS on both ports, with certificates made here by rcgen: the right client
//! certificate is served, none or one from another CA is refused, and a rotated server
//! certificate is picked up without dropping open connections.

mod common;

use std::{path::PathBuf, time::Duration};

use clap::Parser;
use common::{png, typed_request, typed_strings};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, SanType,
};
use reqwest::StatusCode;
use tesserve::{
    config::Cli,
    oip::pb::{self, grpc_inference_service_client::GrpcInferenceServiceClient},
    server::Server,
};
use tonic::{
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity},
    Code,
};

/// A certificate authority that issues server and client certificates.
struct Authority {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate and its key, as PEM.
struct Issued {
    cert: String,
    key: String,
}

impl Authority {
    fn new(name: &str) -> Authority {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Authority { issuer }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    fn issue(&self, names: Vec<SanType>, usage: ExtendedKeyUsagePurpose) -> Issued {
        self.issue_with(names, usage, |_| {})
    }

    fn issue_with(
        &self,
        names: Vec<SanType>,
        usage: ExtendedKeyUsagePurpose,
        adjust: impl FnOnce(&mut CertificateParams),
    ) -> Issued {
        let mut params = CertificateParams::default();
        params.subject_alt_names = names;
        params.extended_key_usages = vec![usage];
        adjust(&mut params);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Issued {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    fn server(&self) -> Issued {
        self.issue(
            vec![
                SanType::DnsName("localhost".try_into().unwrap()),
                SanType::IpAddress([127, 0, 0, 1].into()),
            ],
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    fn client(&self, spiffe_id: &str) -> Issued {
        self.issue(
            vec![SanType::URI(spiffe_id.try_into().unwrap())],
            ExtendedKeyUsagePurpose::ClientAuth,
        )
    }
}

/// A directory of PEM files for one test.
struct Files {
    dir: PathBuf,
}

impl Files {
    fn new(test: &str) -> Files {
        let dir = std::env::temp_dir().join(format!("tesserve-tls-{test}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Files { dir }
    }

    fn write(&self, name: &str, text: &str) -> String {
        let path = self.dir.join(name);
        // Write then rename, as cert-manager's atomic volume updates do.
        let partial = self.dir.join(format!(".{name}.tmp"));
        std::fs::write(&partial, text).unwrap();
        std::fs::rename(&partial, &path).unwrap();
        path.to_str().unwrap().to_owned()
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A ready server; its TLS port needs a TLS client, so no plaintext one is made.
async fn start(flags: &[&str]) -> Server {
    let server = Server::start(common::config(flags)).await.unwrap();
    server.ready().await.unwrap();
    server
}

async fn grpc(
    addr: std::net::SocketAddr,
    ca: &str,
    identity: Option<&Issued>,
) -> Result<GrpcInferenceServiceClient<Channel>, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name("localhost");
    if let Some(issued) = identity {
        tls = tls.identity(Identity::from_pem(&issued.cert, &issued.key));
    }
    let channel = Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)?
        .connect()
        .await?;
    Ok(GrpcInferenceServiceClient::new(channel))
}

fn rest(ca: &str, identity: Option<&Issued>) -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(ca.as_bytes()).unwrap()]);
    if let Some(issued) = identity {
        let pem = format!("{}{}", issued.cert, issued.key);
        builder = builder.identity(reqwest::Identity::from_pem(pem.as_bytes()).unwrap());
    }
    builder.build().unwrap()
}

#[tokio::test]
async fn mutual_tls_admits_only_clients_of_the_ca() {
    let files = Files::new("mtls");
    let ca = Authority::new("tesserve test CA");
    let stranger = Authority::new("some other CA");
    let server_cert = ca.server();
    let cert = files.write("tls.crt", &server_cert.cert);
    let key = files.write("tls.key", &server_cert.key);
    let client_ca = files.write("ca.crt", &ca.pem());
    let server = start(&[
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
        "--tls-client-ca",
        &client_ca,
    ])
    .await;
    let trusted = ca.client("spiffe://cluster.local/ns/apps/sa/reader");
    let untrusted = stranger.client("spiffe://cluster.local/ns/apps/sa/reader");
    let image = png(&["Mutual trust"]);

    // gRPC port: the CA's client is served.
    let mut client = grpc(server.grpc_addr(), &ca.pem(), Some(&trusted))
        .await
        .unwrap();
    let reply = client
        .model_infer(typed_request(&[&image]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(typed_strings(&reply, "text")[0].trim(), "Mutual trust");

    // No certificate: probes answer, inference does not.
    let mut anonymous = grpc(server.grpc_addr(), &ca.pem(), None).await.unwrap();
    assert!(
        anonymous
            .server_live(pb::ServerLiveRequest {})
            .await
            .unwrap()
            .into_inner()
            .live
    );
    let refused = anonymous
        .model_infer(typed_request(&[&image]))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    assert!(
        refused.message().contains("client certificate"),
        "{refused:?}"
    );

    // A certificate from another CA fails the handshake.
    let stranger_result = match grpc(server.grpc_addr(), &ca.pem(), Some(&untrusted)).await {
        Err(error) => Err(error.to_string()),
        Ok(mut client) => client
            .model_infer(typed_request(&[&image]))
            .await
            .map(|_| ())
            .map_err(|status| status.to_string()),
    };
    assert!(stranger_result.is_err(), "another CA's client was served");

    // Plaintext on a TLS port gets nowhere.
    let plaintext = async {
        let mut client = common::client(server.grpc_addr()).await;
        client.server_live(pb::ServerLiveRequest {}).await
    };
    let plaintext = tokio::time::timeout(Duration::from_secs(5), plaintext).await;
    assert!(
        !matches!(plaintext, Ok(Ok(_))),
        "plaintext gRPC was served on a TLS port"
    );

    // The REST port, the same three ways.
    let models = format!("https://{}/v2/models/ocr", server.http_addr());
    let served = rest(&ca.pem(), Some(&trusted))
        .get(&models)
        .send()
        .await
        .unwrap();
    assert_eq!(served.status(), StatusCode::OK);
    assert_eq!(served.version(), reqwest::Version::HTTP_2, "ALPN offers h2");
    let anonymous = rest(&ca.pem(), None);
    let refused = anonymous.get(&models).send().await.unwrap();
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    let ready = format!("https://{}/v2/health/ready", server.http_addr());
    assert_eq!(
        anonymous.get(&ready).send().await.unwrap().status(),
        StatusCode::OK,
        "probes need no client certificate"
    );
    assert!(rest(&ca.pem(), Some(&untrusted))
        .get(&models)
        .send()
        .await
        .is_err());

    // An open path is open to all, but a verified certificate still names the caller.
    let trusted_rest = rest(&ca.pem(), Some(&trusted));
    assert!(trusted_rest
        .get(&ready)
        .send()
        .await
        .unwrap()
        .status()
        .is_success());

    // An expired certificate of the right CA fails too.
    let expired = ca.issue_with(
        vec![SanType::URI(
            "spiffe://cluster.local/ns/apps/sa/old".try_into().unwrap(),
        )],
        ExtendedKeyUsagePurpose::ClientAuth,
        |params| {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        },
    );
    assert!(rest(&ca.pem(), Some(&expired))
        .get(&models)
        .send()
        .await
        .is_err());

    // Each refusal is counted under the reason rustls gave, so an operator can tell a wrong
    // certificate from a network fault.
    let metrics = common::get_text(
        &anonymous,
        format!("https://{}/metrics", server.http_addr()),
    )
    .await;
    assert!(
        metrics
            .lines()
            .any(|line| line.starts_with("tesserve_requests_total{")
                && line.contains(r#"endpoint="/v2/health/ready""#)
                && line.contains(r#"tenant="spiffe://cluster.local/ns/apps/sa/reader""#)),
        "the probe is counted under the certificate's identity"
    );
    for reason in ["unknown_issuer", "expired", "protocol"] {
        let series = format!("tesserve_tls_handshake_failures_total{{reason=\"{reason}\"}}");
        assert!(
            metrics.lines().any(|line| line.starts_with(&series)),
            "{series} in\n{metrics}"
        );
    }
}

#[tokio::test]
async fn rotated_certificates_are_served_without_dropping_connections() {
    let files = Files::new("rotate");
    let old_ca = Authority::new("old CA");
    let new_ca = Authority::new("new CA");
    let first = old_ca.server();
    let cert = files.write("tls.crt", &first.cert);
    let key = files.write("tls.key", &first.key);
    let server = start(&["--tls-cert", &cert, "--tls-key", &key]).await;

    let mut before = grpc(server.grpc_addr(), &old_ca.pem(), None).await.unwrap();
    assert!(grpc(server.grpc_addr(), &new_ca.pem(), None).await.is_err());

    // A long request is in flight on the old connection while the files change.
    let mut in_flight_client = before.clone();
    let in_flight = tokio::spawn(async move {
        in_flight_client
            .model_infer(typed_request(&[common::long_page()]))
            .await
    });
    let second = new_ca.server();
    files.write("tls.key", &second.key);
    files.write("tls.crt", &second.cert);
    // The files are compared every few seconds; new connections get the new certificate.
    let mut rotated = None;
    for _ in 0..100 {
        if let Ok(client) = grpc(server.grpc_addr(), &new_ca.pem(), None).await {
            rotated = Some(client);
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut after = rotated.expect("the rotated certificate is served within 20 s");
    assert!(after.server_live(pb::ServerLiveRequest {}).await.is_ok());
    // The connection made before the rotation is still open and served.
    let reply = before
        .model_infer(typed_request(&[png(&["Still here"])]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(typed_strings(&reply, "text")[0].trim(), "Still here");
    let long = in_flight
        .await
        .unwrap()
        .expect("the in-flight request finishes");
    assert!(typed_strings(&long.into_inner(), "text")[0].contains("Line 39"));
    assert!(grpc(server.grpc_addr(), &old_ca.pem(), None).await.is_err());

    // A broken file is logged and counted; the last good certificate stays in use.
    files.write("tls.crt", "-----BEGIN CERTIFICATE-----\nbroken\n");
    let metrics = format!("https://{}/metrics", server.http_addr());
    let rest = rest(&new_ca.pem(), None);
    let failed_reload = "tesserve_tls_reloads_total{outcome=\"error\"}";
    let mut seen = false;
    for _ in 0..100 {
        let text = common::get_text(&rest, &metrics).await;
        if text.lines().any(|line| line.starts_with(failed_reload)) {
            seen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(seen, "the broken file was read and refused within 20 s");
    let mut still = grpc(server.grpc_addr(), &new_ca.pem(), None)
        .await
        .expect("the last good certificate is still served");
    assert!(still.server_live(pb::ServerLiveRequest {}).await.is_ok());
}

#[test]
fn bad_tls_files_stop_the_server_before_it_starts() {
    let files = Files::new("bad");
    let ca = Authority::new("CA");
    let issued = ca.server();
    let other = ca.server();
    let cert = files.write("tls.crt", &issued.cert);
    let wrong_key = files.write("tls.key", &other.key);
    let not_pem = files.write("junk.pem", "not a certificate");
    let validate = |flags: &[&str]| {
        let args = ["tesserve"].into_iter().chain(flags.iter().copied());
        Cli::try_parse_from(args)
            .map_err(|e| e.to_string())
            .and_then(|cli| cli.serve.validate().map(|_| ()).map_err(|e| e.to_string()))
    };
    let mismatch = validate(&["--tls-cert", &cert, "--tls-key", &wrong_key]).unwrap_err();
    assert!(mismatch.contains("do not belong together"), "{mismatch}");
    let junk = validate(&["--tls-cert", &not_pem, "--tls-key", &wrong_key]).unwrap_err();
    assert!(
        junk.contains("junk.pem") && junk.contains("no PEM certificate"),
        "{junk}"
    );
    let missing = validate(&["--tls-cert", &cert]).unwrap_err();
    assert!(missing.contains("--tls-key"), "{missing}");
    let ca_junk = validate(&[
        "--tls-cert",
        &cert,
        "--tls-key",
        &files.write("right.key", &issued.key),
        "--tls-client-ca",
        &not_pem,
    ])
    .unwrap_err();
    assert!(ca_junk.contains("junk.pem"), "{ca_junk}");
}

#[tokio::test]
async fn healthcheck_speaks_tls_and_trusts_exactly_the_served_certificate() {
    let files = Files::new("healthcheck");
    let ca = Authority::new("healthcheck CA");
    let served = ca.server();
    let cert = files.write("tls.crt", &served.cert);
    let key = files.write("tls.key", &served.key);
    let other = files.write("other.crt", &ca.server().cert);
    let server = start(&["--tls-cert", &cert, "--tls-key", &key]).await;
    let port = server.grpc_addr().port().to_string();
    let check = move |cert: Option<&str>| {
        let mut command = std::process::Command::new(common::served::BIN);
        command
            .args(["healthcheck", "--grpc-port", &port, "--timeout", "10"])
            .env_remove("TESSERVE_TLS_CERT")
            .env("OMP_THREAD_LIMIT", "1");
        if let Some(cert) = cert {
            command.args(["--tls-cert", cert]);
        }
        command.output().unwrap()
    };
    let checks =
        tokio::task::spawn_blocking(move || [check(Some(&cert)), check(None), check(Some(&other))])
            .await
            .unwrap();
    let [pinned, plaintext, stranger] = checks;
    assert!(pinned.status.success(), "{pinned:?}");
    // Plaintext against a TLS port, and a certificate of the same CA that is not the one
    // served, both fail.
    assert!(!plaintext.status.success(), "{plaintext:?}");
    assert!(!stranger.status.success(), "{stranger:?}");
    let said = String::from_utf8_lossy(&stranger.stderr);
    assert!(said.contains("not reachable"), "{said}");
}
