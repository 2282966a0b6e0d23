//! The listeners: gRPC on its own port (tonic's HTTP/2 transport), and REST + gRPC together on
//! the REST port (HTTP/1.1 and HTTP/2), both plaintext or TLS ([`crate::listener`]); standard
//! health checking that follows readiness, server reflection (v1 and v1alpha), request ids,
//! and graceful shutdown.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use axum::{
    http::{header, HeaderMap},
    response::{IntoResponse, Response},
};
use futures::TryFutureExt;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto, graceful::GracefulShutdown},
    service::TowerToHyperService,
};
use tokio::{net::TcpListener, sync::watch, task::JoinHandle};
use tokio_stream::{Stream, StreamExt};
use tonic::{codec::CompressionEncoding, service::Routes};
use tonic_health::{
    pb::health_server::HealthServer,
    server::{HealthReporter, HealthService},
    ServingStatus,
};
use tower::ServiceExt;
use tower_http::{
    request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer},
    timeout::TimeoutBody,
};

use crate::{
    auth::AuthLayer,
    config::{ConnectionLimits, ServeConfig, Shutdown},
    listener::{self, Connection},
    model::{Model, NotReady, ResultCache},
    ocr::{EnginePool, PoolError},
    oip::{
        grpc::OipService,
        pb::{self, grpc_inference_service_server::GrpcInferenceServiceServer},
        rest,
    },
    telemetry::AccessLayer,
    tls::Tls,
};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Pool(#[from] PoolError),
    #[error("reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("server task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// A server that is listening. Engines may still be loading: see [`Server::ready`].
pub struct Server {
    grpc_addr: SocketAddr,
    http_addr: SocketAddr,
    model: Arc<Model>,
    health: HealthReporter,
    drain: Shutdown,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<Result<(), ServeError>>>,
    /// Background work that lives as long as the server: readiness, certificate reloads.
    followers: Vec<JoinHandle<()>>,
}

/// The fully qualified name health checks use for the inference service.
pub const SERVICE_NAME: &str =
    <GrpcInferenceServiceServer<OipService> as tonic::server::NamedService>::NAME;

impl Server {
    /// Binds both listeners and starts serving; the engines load in the background while
    /// health reports NOT_SERVING.
    pub async fn start(config: ServeConfig) -> Result<Server, ServeError> {
        let grpc_listener = bind(config.grpc_addr).await?;
        let http_listener = bind(config.http_addr).await?;
        let grpc_addr = local_addr(&grpc_listener, config.grpc_addr)?;
        let http_addr = local_addr(&http_listener, config.http_addr)?;
        // Before anything records a metric.
        crate::telemetry::metrics::exporter();
        let model = Model::new(
            config.model_name,
            EnginePool::start(config.pool)?,
            config.admission,
            (config.cache_bytes > 0).then(|| ResultCache::new(config.cache_bytes)),
        );
        let health = HealthReporter::new();
        set_health(&health, ServingStatus::NotServing).await;
        let health_service = HealthServer::new(HealthService::from_health_reporter(health.clone()));
        let grpc = GrpcServices {
            model: model.clone(),
            health: health_service,
            max_message_bytes: config.max_message_bytes,
        };
        let auth = AuthLayer::new(config.auth);
        let (shutdown, shutdown_rx) = watch::channel(false);
        let stopped = |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|stop| *stop).await;
        };

        // The gRPC port: HTTP/2 only, tonic's own transport.
        // tonic applies the first layer outermost: the id is set before it is logged.
        let router = tonic::transport::Server::builder()
            .max_concurrent_streams(config.connections.max_concurrent_streams)
            .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
            .layer(PropagateRequestIdLayer::x_request_id())
            .layer(AccessLayer)
            .layer(auth.clone())
            .add_routes(grpc.routes()?);
        let handshake_timeout = config.connections.header_read_timeout;
        let incoming = listener::incoming(grpc_listener, config.tls.clone(), handshake_timeout);
        let grpc_task = tokio::spawn(
            router
                .serve_with_incoming_shutdown(incoming, stopped(shutdown_rx.clone()))
                .map_err(ServeError::from),
        );

        // The REST port: HTTP/1.1 and h2c, REST and gRPC on one listener.
        // axum applies the last layer outermost.
        let app = grpc
            .routes()?
            .into_axum_router()
            .merge(rest::router(model.clone(), config.rest))
            .fallback(fallback)
            .layer(auth)
            .layer(AccessLayer)
            .layer(PropagateRequestIdLayer::x_request_id())
            .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid));
        let http_task = tokio::spawn(serve_http(
            listener::incoming(http_listener, config.tls.clone(), handshake_timeout),
            app,
            config.connections,
            stopped(shutdown_rx),
        ));

        tracing::info!(
            %grpc_addr,
            %http_addr,
            model = model.name(),
            tls = config.tls.is_some(),
            client_certificates = config.tls.as_ref().is_some_and(Tls::verifies_clients),
            "listening"
        );
        let mut followers = vec![tokio::spawn(follow_load(model.clone(), health.clone()))];
        if let Some(tls) = config.tls {
            followers.push(tokio::spawn(tls.follow_files()));
        }
        Ok(Server {
            grpc_addr,
            http_addr,
            model,
            health,
            drain: config.shutdown,
            shutdown,
            tasks: vec![grpc_task, http_task],
            followers,
        })
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    pub fn model(&self) -> &Arc<Model> {
        &self.model
    }

    /// Waits for the engines to load, then reports SERVING.
    pub async fn ready(&self) -> Result<(), ServeError> {
        self.model.pool().wait_ready().await?;
        sync_health(&self.model, &self.health).await;
        tracing::info!(
            workers = self.model.pool().workers(),
            lang = self.model.pool().default_lang().as_str(),
            "ready"
        );
        Ok(())
    }

    /// Drains: readiness turns false at once; the listeners keep accepting for the grace
    /// period (load balancers need a moment to stop routing here), then stop; in-flight and
    /// queued requests finish within the shutdown timeout, or are abandoned with a warning.
    pub async fn shutdown(self) -> Result<(), ServeError> {
        self.model.start_draining();
        for follower in &self.followers {
            follower.abort();
        }
        set_health(&self.health, ServingStatus::NotServing).await;
        tracing::info!(grace = ?self.drain.grace, "draining: readiness is false");
        tokio::time::sleep(self.drain.grace).await;
        let _ = self.shutdown.send(true);
        let finish = async {
            for task in self.tasks {
                task.await??;
            }
            Ok::<_, ServeError>(())
        };
        match tokio::time::timeout(self.drain.timeout, finish).await {
            Ok(finished) => finished,
            Err(_) => {
                tracing::warn!(
                    timeout = ?self.drain.timeout,
                    "drain overran the shutdown timeout; exiting with requests in flight"
                );
                Ok(())
            }
        }
    }
}

/// What both listeners serve over gRPC. Each listener gets its own service instances; they
/// share the model and the health state.
struct GrpcServices {
    model: Arc<Model>,
    health: HealthServer<HealthService>,
    max_message_bytes: usize,
}

impl GrpcServices {
    fn routes(&self) -> Result<Routes, ServeError> {
        // grpcurl up to 1.8.7, Postman and Python's grpcio-reflection speak only v1alpha.
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        let oip = GrpcInferenceServiceServer::new(OipService::new(self.model.clone()))
            .max_decoding_message_size(self.max_message_bytes)
            .max_encoding_message_size(self.max_message_bytes)
            .accept_compressed(CompressionEncoding::Gzip)
            .send_compressed(CompressionEncoding::Gzip);
        Ok(Routes::new(self.health.clone())
            .add_service(reflection().build_v1()?)
            .add_service(reflection().build_v1alpha()?)
            .add_service(oip))
    }
}

/// Serves HTTP/1.1 and HTTP/2 on one listener, with the connection limits, until `stop`; then
/// lets open connections finish their requests.
async fn serve_http(
    mut incoming: impl Stream<Item = std::io::Result<Connection>> + Unpin,
    app: axum::Router,
    limits: ConnectionLimits,
    stop: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_concurrent_streams);
    let connections = GracefulShutdown::new();
    tokio::pin!(stop);
    loop {
        let connection = tokio::select! {
            accepted = incoming.next() => match accepted {
                Some(Ok(connection)) => connection,
                Some(Err(_)) => continue,
                None => break,
            },
            () = &mut stop => break,
        };
        // A body that stalls longer than the limit fails its request instead of holding it.
        let body_timeout = limits.body_read_timeout;
        let peer = connection.peer().clone();
        let service = TowerToHyperService::new(app.clone().map_request(
            move |request: http::Request<hyper::body::Incoming>| {
                let mut request =
                    request.map(|body| axum::body::Body::new(TimeoutBody::new(body_timeout, body)));
                request.extensions_mut().insert(peer.clone());
                request
            },
        ));
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(connection), service)
            .into_owned();
        let connection = connections.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(error = %error, "connection ended with an error");
            }
        });
    }
    drop(incoming);
    connections.shutdown().await;
    Ok(())
}

/// Unknown paths: UNIMPLEMENTED for gRPC callers, a JSON 404 for everyone else.
async fn fallback(headers: HeaderMap) -> Response {
    let grpc = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"));
    if grpc {
        tonic::Status::unimplemented("no such gRPC method").into_http()
    } else {
        rest::not_found().await.into_response()
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })
}

fn local_addr(listener: &TcpListener, addr: SocketAddr) -> Result<SocketAddr, ServeError> {
    listener
        .local_addr()
        .map_err(|source| ServeError::Bind { addr, source })
}

/// Runs until `signal` resolves, then shuts down gracefully.
pub async fn run(config: ServeConfig, signal: impl Future<Output = ()>) -> Result<(), ServeError> {
    let server = Server::start(config).await?;
    tokio::pin!(signal);
    tokio::select! {
        loaded = server.ready() => loaded?,
        () = &mut signal => return server.shutdown().await,
    }
    signal.await;
    tracing::info!("shutting down");
    server.shutdown().await
}

/// Sampling period of the queue for readiness.
const LOAD_SAMPLE: Duration = Duration::from_millis(250);
/// Queue fill at which the server counts as saturated, and for how many samples in a row.
const SATURATED: f64 = 0.9;
const SATURATED_SAMPLES: u32 = 8;
/// Queue fill below which a saturated server is ready again.
const DRAINED: f64 = 0.5;

/// Readiness follows the queue: nearly full for two seconds turns it false, so Kubernetes
/// routes to other replicas; half empty turns it true again. Requests are still served
/// meanwhile.
async fn follow_load(model: Arc<Model>, health: HealthReporter) {
    let mut samples = tokio::time::interval(LOAD_SAMPLE);
    let mut saturated_for = 0;
    loop {
        samples.tick().await;
        let pool = model.pool();
        let fill = pool.queued() as f64 / pool.capacity() as f64;
        saturated_for = if fill >= SATURATED {
            saturated_for + 1
        } else {
            0
        };
        let overloaded = model.readiness() == Err(NotReady::Overloaded);
        if !overloaded && saturated_for >= SATURATED_SAMPLES {
            tracing::warn!(
                queued = pool.queued(),
                "queue saturated: reporting not ready"
            );
            model.set_overloaded(true);
            sync_health(&model, &health).await;
        } else if overloaded && fill < DRAINED {
            tracing::info!(queued = pool.queued(), "queue drained: reporting ready");
            model.set_overloaded(false);
            sync_health(&model, &health).await;
        }
    }
}

async fn sync_health(model: &Model, health: &HealthReporter) {
    let status = match model.is_ready() {
        true => ServingStatus::Serving,
        false => ServingStatus::NotServing,
    };
    set_health(health, status).await;
}

/// The whole server ("") and the inference service follow readiness together.
async fn set_health(health: &HealthReporter, status: ServingStatus) {
    health.set_service_status("", status).await;
    health.set_service_status(SERVICE_NAME, status).await;
}
