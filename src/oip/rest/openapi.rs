//! The OpenAPI 3 description of the REST endpoints, generated from the handlers' annotations,
//! and a self-contained page that renders it (no asset is fetched from anywhere).

use std::sync::Arc;

use axum::{
    http::header,
    response::{Html, IntoResponse},
    Extension, Json,
};
use utoipa::{
    openapi::{
        path::Operation,
        security::{
            ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
        },
        OpenApi as Document, PathItem,
    },
    Modify, OpenApi,
};

use super::v1;

/// What the document says beyond its operations, which come from the router itself
/// ([`super::router`]): every route is registered together with its description. The one
/// exception is KServe v1's `:predict`, a path axum cannot route (it serves it as a POST on
/// `/v1/models/{model}`).
#[derive(OpenApi)]
#[openapi(
    info(
        title = "tesserve",
        description = "Tesseract OCR over the KServe Open Inference Protocol. The same API is \
                       served over gRPC as inference.GRPCInferenceService."
    ),
    paths(v1::predict),
    modifiers(&ApiKeys),
    security(("api_key" = []), ("bearer" = [])),
    tags(
        (name = "oip", description = "Open Inference Protocol REST v2, with the binary tensor extension"),
        (name = "kserve-v1", description = "KServe v1 protocol"),
        (name = "gateway", description = "Uploads for curl and older OCR clients"),
        (name = "service", description = "Index and health"),
    )
)]
pub struct ApiDoc;

/// The two ways to send an API key (only needed when the server has `--api-keys-file`).
struct ApiKeys;

impl Modify for ApiKeys {
    fn modify(&self, openapi: &mut Document) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("x-api-key"))),
        );
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The path templates whose every operation needs no credentials (`security(())`).
pub fn open_paths(document: &Document) -> Vec<String> {
    let open = |operation: &Operation| {
        operation
            .security
            .as_ref()
            .is_some_and(|s| s.contains(&SecurityRequirement::default()))
    };
    document
        .paths
        .paths
        .iter()
        .filter(|(_, item)| operations(item).all(|(_, operation)| open(operation)))
        .map(|(path, _)| path.clone())
        .collect()
}

/// `METHOD /path` for every operation of the document.
pub fn endpoints(document: &Document) -> Vec<String> {
    document
        .paths
        .paths
        .iter()
        .flat_map(|(path, item)| {
            operations(item).map(move |(method, _)| format!("{method} {path}"))
        })
        .collect()
}

fn operations(item: &PathItem) -> impl Iterator<Item = (&'static str, &Operation)> {
    [
        ("GET", &item.get),
        ("POST", &item.post),
        ("PUT", &item.put),
        ("DELETE", &item.delete),
        ("PATCH", &item.patch),
    ]
    .into_iter()
    .filter_map(|(method, operation)| Some((method, operation.as_ref()?)))
}

#[utoipa::path(get, path = "/openapi.json", security(()), tag = "service",
    responses((status = 200, description = "This document")))]
pub async fn spec(Extension(document): Extension<Arc<Document>>) -> impl IntoResponse {
    Json(document.as_ref().clone())
}

#[utoipa::path(get, path = "/docs", security(()), tag = "service",
    responses((status = 200, description = "A page that renders this document", content_type = "text/html")))]
pub async fn docs() -> impl IntoResponse {
    ([(header::CACHE_CONTROL, "no-cache")], Html(DOCS_PAGE))
}

/// Lists every operation of `/openapi.json` with its parameters, body and responses.
const DOCS_PAGE: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>tesserve API</title>
<style>
body{font:15px/1.45 system-ui,sans-serif;max-width:960px;margin:2em auto;padding:0 1em;color:#222}
h1{margin-bottom:0}.op{border:1px solid #ddd;border-radius:6px;margin:1em 0;padding:.6em 1em}
.m{display:inline-block;min-width:4em;font-weight:700;text-transform:uppercase}
.get{color:#1565c0}.post{color:#2e7d32}code,pre{background:#f5f5f5;border-radius:4px;padding:.1em .3em}
pre{padding:.6em;overflow:auto}small{color:#666}
</style></head><body>
<h1>tesserve API</h1><p id="about"><small>loading /openapi.json …</small></p><div id="ops"></div>
<script>
const esc = s => String(s ?? "").replace(/[&<>"]/g, c => ({"&":"&amp;","<":"&lt;",">":"&gt;","\"":"&quot;"}[c]));
fetch("/openapi.json").then(r => r.json()).then(spec => {
  document.getElementById("about").innerHTML = esc(spec.info.description) +
    ' <small>(<a href="/openapi.json">openapi.json</a>, version ' + esc(spec.info.version) + ")</small>";
  const ops = document.getElementById("ops");
  for (const [path, item] of Object.entries(spec.paths)) {
    for (const [method, op] of Object.entries(item)) {
      const params = (op.parameters || []).map(p => "<code>" + esc(p.name) + "</code> (" + esc(p.in) + ")").join(", ");
      const body = op.requestBody ? Object.keys(op.requestBody.content || {}).join(", ") : "";
      const responses = Object.entries(op.responses || {}).map(([code, r]) => code + " " + esc(r.description)).join("<br>");
      ops.insertAdjacentHTML("beforeend", '<div class="op"><span class="m ' + method + '">' + method +
        "</span> <code>" + esc(path) + "</code> <small>" + esc((op.tags || []).join(", ")) + "</small>" +
        (op.description ? "<p>" + esc(op.description) + "</p>" : "") +
        (params ? "<p>Parameters: " + params + "</p>" : "") +
        (body ? "<p>Body: " + esc(body) + (op.requestBody.description ? " — " + esc(op.requestBody.description) : "") + "</p>" : "") +
        "<p>" + responses + "</p></div>");
    }
  }
}).catch(e => { document.getElementById("about").textContent = "could not load /openapi.json: " + e; });
</script></body></html>"#;
