//! The web UI: `web/index.html`, embedded in the binary so the server works offline.
//!
//! For work on the page itself, `ENGRAM_WEB_DIR=DIR` makes `GET /` read `DIR/index.html` from disk at every
//! request instead (no rebuild per edit); unset, the embedded copy is served.

use super::error::ApiError;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use std::path::Path;

use crate::config::{web_dir_override, WEB_DIR_ENV};

/// The page compiled into the binary.
const EMBEDDED: &str = include_str!("../../web/index.html");

/// `GET /`: the single-page UI (from `ENGRAM_WEB_DIR` when set, else embedded).
pub async fn index() -> Response {
    let Some(dir) = web_dir_override() else {
        return page(EMBEDDED.to_string());
    };
    let path = Path::new(&dir).join("index.html");
    match tokio::fs::read_to_string(&path).await {
        Ok(html) => page(html),
        Err(e) => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "web_ui_unreadable",
            format!(
                "{WEB_DIR_ENV} is set but {} cannot be read: {e}; unset it to serve the embedded page",
                path.display()
            ),
        )
        .into_response(),
    }
}

fn page(html: String) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        html,
    )
        .into_response()
}
