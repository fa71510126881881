//! `/v1/jobs/{id}`: ingestion job status.

use super::error::{ApiError, ErrorEnvelope};
use crate::app::App;
use crate::store::JobRecord;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::Json;
use std::sync::Arc;

/// An ingestion job: status, progress counts and per-item errors.
#[utoipa::path(get, path = "/v1/jobs/{id}", tag = "jobs",
    params(("id" = String, Path, description = "Job id")),
    responses((status = 200, body = JobRecord), (status = 404, body = ErrorEnvelope)))]
pub async fn get(
    State(app): State<Arc<App>>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<JobRecord>, ApiError> {
    let Path(id) = id?;
    app.store
        .get_job(&id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found("job", &id))
}
