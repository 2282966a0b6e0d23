//! The listeners, served by one stack: the gRPC port (HTTP/2 only) and the REST port (HTTP/1.1
//! and HTTP/2, REST and gRPC together) are the same hyper server with the same tower layers in
//! the same order and the same limits; only the protocols they accept and the routes they
//! carry differ. Both are plaintext or TLS ([`crate::listener`]). Also: standard health checking
//! that follows readiness, server reflection (v1 and v1alpha), request ids, graceful shutdown.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use axum::response::Response;
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
    auth::{AuthConfig, AuthLayer, OpenPaths},
    failure::{self, Failure, Reason},
    listener::{self, Connection},
    model::{Admission, Model, NotReady, ResultCache},
    ocr::{EnginePool, PoolConfig, PoolError},
    oip::{
        grpc::{self, OipService},
        pb::grpc_inference_service_server::GrpcInferenceServiceServer,
        rest::{self, RestConfig},
        DESCRIPTOR_SETS,
    },
    telemetry::AccessLayer,
    tls::Tls,
};

/// A validated `serve` configuration.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub model_name: String,
    pub max_message_bytes: usize,
    pub admission: Admission,
    /// Budget of the result cache; 0: no cache.
    pub cache_bytes: usize,
    pub auth: AuthConfig,
    /// `None`: plaintext (HTTP/2 cleartext for gRPC), as behind a mesh sidecar.
    pub tls: Option<Tls>,
    pub connections: ConnectionLimits,
    pub shutdown: Shutdown,
    pub rest: RestConfig,
    pub pool: PoolConfig,
}

/// What one connection may cost the server, on either port.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionLimits {
    pub header_read_timeout: Duration,
    pub body_read_timeout: Duration,
    pub max_concurrent_streams: u32,
}

/// How the server stops on SIGTERM.
#[derive(Clone, Copy, Debug)]
pub struct Shutdown {
    pub grace: Duration,
    pub timeout: Duration,
}

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
        let rest = rest::router(model.clone(), config.rest);
        let open = OpenPaths::new(rest.open_paths.iter().cloned().chain(grpc::open_methods()));
        let auth = AuthLayer::new(config.auth, open);
        let (shutdown, shutdown_rx) = watch::channel(false);
        let stopped = |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|stop| *stop).await;
        };
        let handshake_timeout = config.connections.header_read_timeout;
        let incoming =
            |listener| listener::incoming(listener, config.tls.clone(), handshake_timeout);

        // The gRPC port: gRPC only, over HTTP/2 only.
        let grpc_app = stack(grpc.routes()?.into_axum_router(), auth.clone());
        let grpc_task = tokio::spawn(serve(
            incoming(grpc_listener),
            grpc_app,
            Protocols::Http2Only,
            config.connections,
            stopped(shutdown_rx.clone()),
        ));
        // The REST port: REST and gRPC, over HTTP/1.1 and HTTP/2.
        let http_app = grpc.routes()?.into_axum_router().merge(rest.router);
        let http_task = tokio::spawn(serve(
            incoming(http_listener),
            stack(http_app, auth),
            Protocols::Any,
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
            DESCRIPTOR_SETS.iter().fold(
                tonic_reflection::server::Builder::configure(),
                |builder, set| builder.register_encoded_file_descriptor_set(set),
            )
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

/// The layers every request passes, outermost first: its id is set, then propagated to the
/// response, then the access log and trace span see it, then auth decides; unknown paths get a
/// classified 404 / UNIMPLEMENTED. One function, so both ports apply them in one order.
fn stack(routes: axum::Router, auth: AuthLayer) -> axum::Router {
    // axum applies the last layer outermost.
    routes
        .fallback(fallback)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(auth)
        .layer(AccessLayer::new(crate::oip::grpc_methods()))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
}

/// What a port speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Protocols {
    /// HTTP/1.1 and HTTP/2 (with prior knowledge or ALPN).
    Any,
    /// HTTP/2 only: what gRPC clients speak.
    Http2Only,
}

/// Serves one listener with the connection limits until `stop`; then lets open connections
/// finish their requests.
async fn serve(
    mut incoming: impl Stream<Item = std::io::Result<Connection>> + Unpin,
    app: axum::Router,
    protocols: Protocols,
    limits: ConnectionLimits,
    stop: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    if protocols == Protocols::Http2Only {
        builder = builder.http2_only();
    }
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
            .serve_connection(TokioIo::new(connection), service)
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
async fn fallback(request: axum::extract::Request) -> Response {
    match failure::is_grpc(&request) {
        true => Failure::new(Reason::Unimplemented, "no such gRPC method").respond(true),
        false => rest::not_found().into_http(),
    }
}

/// A path served for other methods: a JSON 405 like every other error (axum keeps `Allow`).
async fn method_not_allowed(method: http::Method, uri: http::Uri) -> Response {
    let message = format!(
        "{method} is not served on {}; see GET / for the list",
        uri.path()
    );
    Failure::new(Reason::MethodNotAllowed, message).into_http()
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
