//! Traces: a gRPC call carrying a W3C `traceparent` yields linked spans, received by a small
//! OTLP collector running in the test. (Its own test binary: the tracer is process-wide.)

mod common;

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use common::{png, TestServer};
use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        trace_service_server::{TraceService, TraceServiceServer},
        ExportTraceServiceRequest, ExportTraceServiceResponse,
    },
    common::v1::any_value::Value as AnyValue,
    trace::v1::Span,
};
use tesserve::{config::LogFormat, oip::pb};
use tokio_stream::wrappers::TcpListenerStream;

#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Span>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap();
        for resource in request.into_inner().resource_spans {
            for scope in resource.scope_spans {
                spans.extend(scope.spans);
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

fn attribute<'a>(span: &'a Span, key: &str) -> Option<&'a AnyValue> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
}

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_ID: &str = "00f067aa0ba902b7";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_traced_grpc_call_yields_linked_spans() {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector_addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector.clone()))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    let telemetry =
        tesserve::telemetry::init(LogFormat::Text, Some(format!("http://{collector_addr}")))
            .unwrap();

    let mut s = TestServer::start(&[]).await;
    let mut request = tonic::Request::new(pb::ModelInferRequest {
        model_name: "ocr".into(),
        inputs: vec![pb::model_infer_request::InferInputTensor {
            name: "image".into(),
            datatype: "BYTES".into(),
            shape: vec![2],
            contents: Some(pb::InferTensorContents {
                bytes_contents: vec![png(&["Traced one"]).into(), png(&["Traced two"]).into()],
                ..Default::default()
            }),
            ..Default::default()
        }],
        ..Default::default()
    });
    let traceparent = format!("00-{TRACE_ID}-{PARENT_ID}-01");
    request
        .metadata_mut()
        .insert("traceparent", traceparent.parse().unwrap());
    s.client.model_infer(request).await.unwrap();

    // Spans close when the request's futures finish; give the server a moment, then export.
    let mut spans = Vec::new();
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        telemetry.flush();
        spans = collector.spans.lock().unwrap().clone();
        if spans.iter().filter(|s| s.name == "recognize").count() == 2 {
            break;
        }
    }

    let by_name = |name: &str| -> Vec<&Span> { spans.iter().filter(|s| s.name == name).collect() };
    let request_span = by_name("/inference.GRPCInferenceService/ModelInfer");
    assert_eq!(
        request_span.len(),
        1,
        "spans: {:?}",
        spans.iter().map(|s| &s.name).collect::<Vec<_>>()
    );
    let request_span = request_span[0];
    assert_eq!(
        hex(&request_span.trace_id),
        TRACE_ID,
        "the caller's trace goes on"
    );
    assert_eq!(
        hex(&request_span.parent_span_id),
        PARENT_ID,
        "child of the caller's span"
    );

    let infer = by_name("infer");
    assert_eq!(infer.len(), 1);
    assert_eq!(infer[0].parent_span_id, request_span.span_id);
    assert!(matches!(attribute(infer[0], "model"), Some(AnyValue::StringValue(m)) if m == "ocr"));
    assert!(matches!(attribute(infer[0], "lang"), Some(AnyValue::StringValue(l)) if l == "eng"));

    let images = by_name("image");
    assert_eq!(images.len(), 2);
    let mut indexes: Vec<_> = images
        .iter()
        .map(|span| match attribute(span, "batch_index") {
            Some(AnyValue::IntValue(i)) => *i,
            other => panic!("batch_index: {other:?}"),
        })
        .collect();
    indexes.sort();
    assert_eq!(indexes, [0, 1]);
    for image in &images {
        assert_eq!(image.parent_span_id, infer[0].span_id);
        for stage in ["queue_wait", "decode", "recognize"] {
            let children: Vec<_> = by_name(stage)
                .into_iter()
                .filter(|s| s.parent_span_id == image.span_id)
                .collect();
            assert_eq!(children.len(), 1, "{stage} under image");
        }
    }
    let recognize = by_name("recognize")[0];
    assert!(matches!(attribute(recognize, "width"), Some(AnyValue::IntValue(w)) if *w > 0));
    assert!(
        spans.iter().all(|s| hex(&s.trace_id) == TRACE_ID),
        "one trace"
    );
}
