//! Liveness, readiness and metrics.

use crate::app::App;
use crate::metrics;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde_json::json;
use std::sync::Arc;

/// Alive: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, description = "Alive")))]
pub async fn healthz() -> impl IntoResponse {
    Json(json!({"status": "ok"}))
}

/// Ready: migrations ran, indexes are open and the database answers; 503 otherwise. Start-up recovery (indexing
/// documents a crash left stored but unindexed) runs in the background, like any ingestion, and is reported in
/// `checks.recovery` (`running` or `done`) without holding readiness back.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses((status = 200, description = "Ready"), (status = 503, description = "Not ready yet")))]
pub async fn readyz(State(app): State<Arc<App>>) -> impl IntoResponse {
    let db = app.store.ping().await;
    let recovered = app.is_ready();
    let ok = db.is_ok();
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({
            "status": if ok { "ready" } else { "starting" },
            "checks": {
                "database": db.as_ref().map(|_| "ok".to_string()).unwrap_or_else(|e| e.to_string()),
                "backend": app.store.backend().name(),
                "indexes": "open",
                "recovery": if recovered { "done" } else { "running" },
            }
        })),
    )
}

/// Prometheus metrics in the text exposition format.
#[utoipa::path(get, path = "/metrics", tag = "operations", responses((status = 200, description = "Metrics")))]
pub async fn metrics_text() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        metrics::render(),
    )
}
