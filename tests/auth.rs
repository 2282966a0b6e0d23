//! API keys and per-tenant rate limits, on both protocols.

mod common;

use common::{png, typed_request, TestServer};
use reqwest::StatusCode;
use tesserve::{auth::key_digest, oip::pb};
use tonic::{Code, Request};

/// A keys file: `acme` (no limit of its own), `tiny` (1 request/s, burst 2), `other` (same).
fn keys_file() -> String {
    let path = std::env::temp_dir().join(format!("tesserve-keys-{}.txt", std::process::id()));
    let text = format!(
        "# tenant:sha256[:rps[:burst]]\nacme:{}\ntiny:{}:1:2\nother:{}:1:2\n",
        key_digest("acme-key"),
        key_digest("tiny-key"),
        key_digest("other-key"),
    );
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

fn with_key<T>(message: T, key: &str) -> Request<T> {
    let mut request = Request::new(message);
    let value = format!("Bearer {key}").parse().unwrap();
    request.metadata_mut().insert("authorization", value);
    request
}

#[tokio::test]
async fn api_keys_missing_wrong_and_right() {
    let keys = keys_file();
    let mut s = TestServer::start(&["--api-keys-file", &keys]).await;

    let missing = s
        .client
        .model_infer(typed_request(&[png(&["Keyed"])]))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::Unauthenticated);
    assert!(
        missing.message().starts_with("missing API key"),
        "{}",
        missing.message()
    );
    let wrong = s
        .client
        .model_infer(with_key(typed_request(&[png(&["Keyed"])]), "nope"))
        .await
        .unwrap_err();
    assert_eq!(
        (wrong.code(), wrong.message()),
        (Code::Unauthenticated, "invalid API key")
    );
    assert!(s
        .client
        .model_infer(with_key(typed_request(&[png(&["Keyed"])]), "acme-key"))
        .await
        .is_ok());

    let http = reqwest::Client::new();
    let url = format!("{}/v2", s.http());
    let response = http.get(&url).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(response.headers()["content-type"], "application/json");
    let body: serde_json::Value = response.json().await.unwrap();
    assert!(body["error"]
        .as_str()
        .unwrap()
        .starts_with("missing API key"));
    let wrong = http
        .get(&url)
        .header("x-api-key", "nope")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    let right = http
        .get(&url)
        .header("x-api-key", "acme-key")
        .send()
        .await
        .unwrap();
    assert_eq!(right.status(), StatusCode::OK);
    let bearer = http.get(&url).bearer_auth("acme-key").send().await.unwrap();
    assert_eq!(bearer.status(), StatusCode::OK);

    // Probes, metrics and descriptions stay open.
    for path in [
        "/healthz",
        "/v2/health/ready",
        "/v2/models/ocr/ready",
        "/metrics",
        "/openapi.json",
    ] {
        let open = http
            .get(format!("{}{path}", s.http()))
            .send()
            .await
            .unwrap();
        assert_eq!(open.status(), StatusCode::OK, "{path}");
    }
    let ready = s
        .client
        .server_ready(pb::ServerReadyRequest {})
        .await
        .unwrap();
    assert!(ready.into_inner().ready);
}

#[tokio::test]
async fn a_tenant_over_its_rate_is_refused_while_another_is_not() {
    let keys = keys_file();
    let mut s = TestServer::start(&["--api-keys-file", &keys]).await;
    let http = reqwest::Client::new();
    let url = format!("{}/v2", s.http());

    let mut statuses = Vec::new();
    for _ in 0..4 {
        let response = http
            .get(&url)
            .header("x-api-key", "tiny-key")
            .send()
            .await
            .unwrap();
        statuses.push(response.status());
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            assert!(response.headers().contains_key("retry-after"));
            let body: serde_json::Value = response.json().await.unwrap();
            assert!(body["error"]
                .as_str()
                .unwrap()
                .contains("rate limit of tenant 'tiny'"));
        }
    }
    assert_eq!(
        &statuses[..2],
        [StatusCode::OK, StatusCode::OK],
        "the burst passes"
    );
    assert!(
        statuses[2..].contains(&StatusCode::TOO_MANY_REQUESTS),
        "{statuses:?}"
    );

    let over = s
        .client
        .server_metadata(with_key(pb::ServerMetadataRequest {}, "tiny-key"))
        .await
        .unwrap_err();
    assert_eq!(over.code(), Code::ResourceExhausted);

    // Another tenant's bucket is its own; a tenant without a limit is never limited.
    let other = http
        .get(&url)
        .header("x-api-key", "other-key")
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), StatusCode::OK);
    for _ in 0..5 {
        let acme = http
            .get(&url)
            .header("x-api-key", "acme-key")
            .send()
            .await
            .unwrap();
        assert_eq!(acme.status(), StatusCode::OK);
    }
}

#[tokio::test]
async fn without_keys_the_default_limit_applies_per_named_tenant() {
    let mut s = TestServer::start(&["--rate-limit-rps", "1", "--rate-limit-burst", "1"]).await;
    let http = reqwest::Client::new();
    let url = format!("{}/v2", s.http());
    let first = http
        .get(&url)
        .header("x-tenant-id", "a")
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    let second = http
        .get(&url)
        .header("x-tenant-id", "a")
        .send()
        .await
        .unwrap();
    assert_eq!(second.status(), StatusCode::TOO_MANY_REQUESTS);
    let b = http
        .get(&url)
        .header("x-tenant-id", "b")
        .send()
        .await
        .unwrap();
    assert_eq!(b.status(), StatusCode::OK);
    let anonymous = s.client.server_metadata(pb::ServerMetadataRequest {}).await;
    assert!(anonymous.is_ok());
}
