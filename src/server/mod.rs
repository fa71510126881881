//! The HTTP API (axum). One module per endpoint family; [`error`] is the one place errors become HTTP.

mod auth;
pub mod body;
pub mod documents;
pub mod embeddings;
pub mod error;
pub mod health;
pub mod jobs;
pub mod openai;
pub mod qa;
pub mod retrieve;
mod ui;

use crate::app::App;
use crate::metrics;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::http::{HeaderName, StatusCode};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use axum::Router;
use error::ApiError;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
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
        openai::chat,
        openai::completions,
        openai::models,
        health::healthz,
        health::readyz,
        health::metrics_text,
    ),
    components(schemas(error::ErrorEnvelope, error::ErrorBody))
)]
pub struct ApiDoc;

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The full router: API, operations endpoints, OpenAPI/Swagger and the UI.
pub fn router(app: Arc<App>) -> Router {
    let writes = Router::new()
        .route("/v1/documents", post(documents::create))
        .route(
            "/v1/documents/{id}",
            axum::routing::delete(documents::delete),
        )
        .route_layer(middleware::from_fn_with_state(
            app.clone(),
            auth::require_api_key,
        ));
    let api = Router::new()
        .route("/v1/documents", get(documents::list))
        .route("/v1/documents/{id}", get(documents::get))
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
        .merge(writes)
        .with_state(app.clone());
    Router::new()
        .merge(SwaggerUi::new("/docs").url("/openapi.json", ApiDoc::openapi()))
        .merge(api)
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
        .layer(DefaultBodyLimit::max(app.config.server.max_body_bytes))
        .layer(middleware::from_fn(record_metrics))
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
/// beside it; on shutdown, stops taking connections, lets in-flight requests finish (up to
/// `server.shutdown_grace_secs`), stops the worker between batches and closes the database.
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
    let token = shutdown.clone();
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::warn!(error = %e, "cannot set TCP_NODELAY");
        }
    });
    let server = axum::serve(listener, router(app.clone()))
        .with_graceful_shutdown(async move { token.cancelled().await });
    let result = tokio::select! {
        r = server => r,
        _ = async { shutdown.cancelled().await; tokio::time::sleep(grace).await } => {
            tracing::warn!("in-flight requests did not finish within {grace:?}; closing");
            Ok(())
        }
    };
    signals.abort();
    if tokio::time::timeout(grace, worker).await.is_err() {
        tracing::warn!(
            "the ingestion worker did not stop in time; its job resumes at the next start"
        );
    }
    app.store.close().await;
    result
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
