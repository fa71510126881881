//! The web UI: static files from `web/`, embedded in the binary so the server works offline.

use axum::http::header;
use axum::response::IntoResponse;

/// `GET /`: the single-page UI.
pub async fn index() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        include_str!("../../web/index.html"),
    )
}
