//! The HTTP API (axum). One module per endpoint family; [`error`] is the one place errors become HTTP.

pub mod admission;
pub mod auth;
pub mod body;
pub mod documents;
pub mod embeddings;
pub mod error;
pub mod health;
pub mod jobs;
pub mod openai;
pub mod qa;
pub mod retrieve;
pub mod spec;
pub mod sse;
mod ui;

use crate::app::App;
use crate::config::ServerConfig;
use crate::metrics;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{header, HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use error::ApiError;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::CorsLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;
use utoipa_swagger_ui::SwaggerUi;

/// The OpenAPI description of the API, generated from the handlers.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Engram",
        description = "Retrieval-augmented multi-hop question answering"
    ),
    paths(
        documents::create,
        documents::list,
        documents::get,
        documents::delete,
        jobs::get,
        retrieve::retrieve,
        qa::qa,
        embeddings::create,
        openai::chat,
        openai::completions,
        openai::models,
        health::healthz,
        health::readyz,
        health::metrics_text,
    ),
    components(schemas(error::ErrorEnvelope, error::ErrorBody)),
    modifiers(&CommonResponses)
)]
pub struct ApiDoc;

/// Adds the answers every route may give (see [`protect`]) to each operation that does not list them: 401 (no or
/// wrong key), 403 (host or origin not allowed), 500 (a bug, naming the request id) and 503 (request timeout), and
/// on operations with a body 408 (body timeout), 413 (body too large) and 415 (not JSON).
struct CommonResponses;

impl utoipa::Modify for CommonResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
        let error = |description: &str| {
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("ErrorEnvelope")))
                        .build(),
                )
                .build()
        };
        let common = [
            (
                "401",
                "No API key, or a wrong one (`unauthorized`, `invalid_api_key`)",
            ),
            (
                "403",
                "Host or origin not allowed (`host_not_allowed`, `origin_not_allowed`)",
            ),
            (
                "500",
                "Internal error (`internal_error`; the message names the request id)",
            ),
            (
                "503",
                "The response did not start in time (`request_timeout`, with Retry-After)",
            ),
        ];
        let with_body = [
            ("408", "The body did not arrive in time (`body_timeout`)"),
            ("413", "Body too large (`payload_too_large`)"),
            ("415", "Not JSON (`unsupported_media_type`)"),
        ];
        for (path, item) in openapi.paths.paths.iter_mut() {
            if path == "/healthz" || path == "/readyz" {
                continue;
            }
            let ops = [
                (&mut item.get, false),
                (&mut item.post, true),
                (&mut item.delete, false),
            ];
            for (op, body) in ops {
                let Some(op) = op.as_mut() else { continue };
                let extra = if body { &with_body[..] } else { &[] };
                for (code, description) in common.iter().chain(extra) {
                    op.responses
                        .responses
                        .entry((*code).to_string())
                        .or_insert_with(|| error(description).into());
                }
            }
        }
    }
}

/// How long streams cut at shutdown get to send their terminal event.
const STREAM_END_SECS: Duration = Duration::from_secs(2);

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The full router: API, operations endpoints, OpenAPI/Swagger and the UI, behind the guard ([`auth::guard`]),
/// the request timeout and the panic catcher.
pub fn router(app: Arc<App>) -> Router {
    let api = Router::new()
        .route(
            "/v1/documents",
            post(documents::create).get(documents::list),
        )
        .route(
            "/v1/documents/{id}",
            get(documents::get).delete(documents::delete),
        )
        .route("/v1/jobs/{id}", get(jobs::get))
        .route("/v1/retrieve", post(retrieve::retrieve))
        .route("/v1/qa", post(qa::qa))
        .route("/v1/embeddings", post(embeddings::create))
        .route("/v1/chat/completions", post(openai::chat))
        .route("/v1/completions", post(openai::completions))
        .route("/v1/models", get(openai::models))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics_text))
        .route("/", get(ui::index))
        .with_state(app.clone());
    let routes = Router::new()
        .merge(SwaggerUi::new("/docs").url("/openapi.json", spec::for_app(ApiDoc::openapi(), &app)))
        .merge(api);
    protect(routes, &app.config.server)
}

/// `routes` behind what every route gets: the 404 and 405 fallbacks, the body limit, the request timeout, the
/// guard ([`auth::guard`]), CORS, metrics, the panic catcher (a panic is a 500 naming the request id) and the
/// request id.
pub fn protect(routes: Router, server: &ServerConfig) -> Router {
    let timeout = Duration::from_secs(server.request_timeout_secs);
    routes
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "route_not_found", "no such endpoint; see /docs")
        })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this endpoint does not accept that HTTP method; see /docs",
            )
        })
        .layer(DefaultBodyLimit::max(server.max_body_bytes))
        .layer(middleware::from_fn_with_state(timeout, request_timeout))
        .layer(middleware::from_fn_with_state(
            auth::Guard::new(server),
            auth::guard,
        ))
        .layer(cors(&server.cors_origins))
        .layer(middleware::from_fn(record_metrics))
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(middleware::from_fn(name_panics))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(
            TraceLayer::new_for_http().make_span_with(|req: &Request| {
                let id = req
                    .headers()
                    .get(REQUEST_ID)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-");
                tracing::info_span!("request", method = %req.method(), uri = %req.uri(), request_id = %id)
            }),
        )
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
}

/// CORS for `origins` (none: no CORS headers at all, so browsers keep other sites out).
fn cors(origins: &[String]) -> CorsLayer {
    let allowed: Vec<HeaderValue> = origins.iter().filter_map(|o| o.parse().ok()).collect();
    if allowed.is_empty() {
        return CorsLayer::new();
    }
    CorsLayer::new()
        .allow_origin(allowed)
        .allow_methods([Method::GET, Method::POST, Method::DELETE])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            HeaderName::from_static("x-api-key"),
        ])
        .expose_headers([REQUEST_ID, header::RETRY_AFTER, header::LOCATION])
        .max_age(Duration::from_secs(600))
}

/// Marks a response made for a panic, for [`name_panics`] to add the request id.
#[derive(Debug, Clone, Copy)]
struct Panicked;

/// The response to a handler's panic: logged, then a 500 in the usual error shape.
fn panic_response(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let message = crate::ingest::loaders::panic_message(&*panic);
    tracing::error!(panic = %message, "a request handler panicked");
    metrics::PANICS.inc();
    let mut res = ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal_error",
        "internal server error; see the server log",
    )
    .into_response();
    res.extensions_mut().insert(Panicked);
    res
}

/// Rewrites a panic's 500 to name the request id, so the log line can be found.
async fn name_panics(req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_string();
    let res = next.run(req).await;
    if res.extensions().get::<Panicked>().is_none() {
        return res;
    }
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal_error",
        format!("internal server error (request id {id}); see the server log"),
    )
    .into_response()
}

/// 503 `request_timeout` when the response does not start within `timeout` (the handler is dropped, which
/// cancels its work; a started stream is not cut).
async fn request_timeout(State(timeout): State<Duration>, req: Request, next: Next) -> Response {
    match tokio::time::timeout(timeout, next.run(req)).await {
        Ok(res) => res,
        Err(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "request_timeout",
            format!(
                "the request took longer than {} s (server.request_timeout_secs); ask for less",
                timeout.as_secs()
            ),
        )
        .retry_after(1)
        .into_response(),
    }
}

async fn record_metrics(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let method = req.method().to_string();
    let started = Instant::now();
    let res = next.run(req).await;
    metrics::HTTP_DURATION
        .with_label_values(&[&method, &route])
        .observe(started.elapsed().as_secs_f64());
    metrics::HTTP_REQUESTS
        .with_label_values(&[&method, &route, res.status().as_str()])
        .inc();
    res
}

/// Serves `app` on `listener` until `shutdown` is cancelled (or SIGINT/SIGTERM), running the ingestion worker
/// beside it. At most `server.max_connections` connections are served at once (more wait in the backlog), and a
/// client that does not send its headers within `server.header_timeout_secs` is disconnected. On shutdown, stops
/// taking connections, lets in-flight requests finish (up to `server.shutdown_grace_secs`), stops the worker
/// between batches and closes the database.
pub async fn serve(
    app: Arc<App>,
    listener: tokio::net::TcpListener,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let worker = {
        let app = app.clone();
        let token = shutdown.clone();
        tokio::spawn(async move {
            let pipeline = app.pipeline.clone();
            if let Err(e) = pipeline.index_pending().await {
                tracing::error!(error = %e, "recovering unindexed documents failed");
            }
            app.set_ready();
            pipeline.run_worker(token).await;
        })
    };
    let signals = {
        let token = shutdown.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("shutdown signal received");
            token.cancel();
        })
    };
    let grace = Duration::from_secs(app.config.server.shutdown_grace_secs);
    let open = accept_loop(&app, listener, &shutdown).await;
    if !open.drain(grace).await {
        tracing::warn!("in-flight requests did not finish within {grace:?}; ending open streams");
        app.streams_cut.cancel();
        if !open.drain(STREAM_END_SECS).await {
            tracing::warn!("connections still open after their streams ended; closing");
        }
    }
    signals.abort();
    if tokio::time::timeout(grace, worker).await.is_err() {
        tracing::warn!(
            "the ingestion worker did not stop in time; its job resumes at the next start"
        );
    }
    app.store.close().await;
    Ok(())
}

/// The connections being served: each holds one of `server.max_connections` slots.
struct OpenConnections {
    slots: Arc<Semaphore>,
    max: u32,
}

impl OpenConnections {
    /// Waits up to `grace` for every connection to close; returns whether they all did.
    async fn drain(&self, grace: Duration) -> bool {
        tokio::time::timeout(grace, self.slots.acquire_many(self.max))
            .await
            .is_ok_and(|all| all.is_ok())
    }
}

/// Accepts connections until `shutdown`, each served by hyper's HTTP/1 with a header read timeout, holding one
/// of `server.max_connections` slots; at shutdown each connection finishes its request in flight and closes.
async fn accept_loop(
    app: &Arc<App>,
    listener: tokio::net::TcpListener,
    shutdown: &CancellationToken,
) -> OpenConnections {
    let router = router(app.clone());
    let max = u32::try_from(app.config.server.max_connections).unwrap_or(u32::MAX >> 3);
    let slots = Arc::new(Semaphore::new(max as usize));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(app.config.server.header_timeout_secs));
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
            _ = shutdown.cancelled() => break,
        };
        let tcp = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    // Out of file descriptors, or a connection reset before it was accepted: wait a moment.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::warn!(error = %e, "cannot set TCP_NODELAY");
        }
        let service = TowerToHyperService::new(router.clone());
        let conn = http.serve_connection(TokioIo::new(tcp), service);
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            tokio::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                _ = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            drop(slot);
        });
    }
    OpenConnections { slots, max }
}

async fn wait_for_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}
