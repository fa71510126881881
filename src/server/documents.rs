//! `/v1/documents`: ingestion (JSON or multipart upload), listing, reading and deleting documents.

use super::body::{
    body_timeout, from_value, is_json, is_length_limit, off_thread, parse_value, read_limited,
    too_large, BodyLimits,
};
use super::error::{ApiError, ErrorEnvelope};
use crate::app::App;
use crate::ingest::loaders::{self, LoadLimits};
use crate::store::NewDocument;
use crate::store::{DocumentPage, DocumentRecord};
use axum::extract::rejection::PathRejection;
use axum::extract::{FromRequest, Multipart, Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// One document given inline.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DocumentInput {
    /// Title; when absent, the first line of the text (up to 80 characters).
    #[serde(default)]
    pub title: Option<String>,
    /// The text (must not be empty).
    #[schema(min_length = 1)]
    pub text: String,
    /// Any JSON object, stored with the document.
    #[serde(default)]
    #[schema(value_type = Object, nullable)]
    pub metadata: serde_json::Value,
}

/// Several documents given inline.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DocumentBatch {
    /// The documents.
    pub documents: Vec<DocumentInput>,
}

/// The answer to an accepted ingestion.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobAccepted {
    /// Poll `GET /v1/jobs/{job_id}` for progress.
    pub job_id: String,
    /// Always `queued`.
    pub status: String,
    /// Number of documents in the job.
    pub documents: usize,
}

/// Paging for `GET /v1/documents`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Page size, 1 to 1000 (default 50).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
    /// Documents to skip (default 0).
    #[param(minimum = 0)]
    pub offset: Option<i64>,
    /// Only titles containing this text (case-insensitive).
    pub q: Option<String>,
}

/// Ingest documents: a JSON body (`{title,text,metadata}`, an array of them, or `{"documents":[...]}`) or a
/// multipart upload (field `file`, repeatable) of .txt .md .html .pdf .json .jsonl files. Everything is validated
/// before anything is stored; the job then runs in the background.
#[utoipa::path(post, path = "/v1/documents", tag = "documents",
    request_body(content = DocumentBatch, description = "JSON documents, or multipart/form-data with `file` fields"),
    responses(
        (status = 202, description = "Job accepted", body = JobAccepted),
        (status = 400, description = "Malformed input, or a JSON body nested too deep (`nesting_too_deep`)", body = ErrorEnvelope),
        (status = 401, description = "Missing API key", body = ErrorEnvelope),
        (status = 413, description = "Body too large", body = ErrorEnvelope),
        (status = 415, description = "Unsupported content or file type", body = ErrorEnvelope),
        (status = 408, description = "The body did not arrive in time (`body_timeout`)", body = ErrorEnvelope),
        (status = 422, description = "Empty text, corrupt PDF, bad corpus file, or a file nested too deep (`nesting_too_deep`)", body = ErrorEnvelope),
    ))]
pub async fn create(
    State(app): State<Arc<App>>,
    req: Request,
) -> Result<impl IntoResponse, ApiError> {
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let limits = BodyLimits::of(&app);
    let documents = if is_json(&content_type) {
        let bytes = read_limited(req.into_body(), &limits).await?;
        off_thread(bytes.len(), move || {
            json_documents(&bytes, limits.max_depth)
        })
        .await?
    } else if content_type.starts_with("multipart/form-data") {
        let multipart = Multipart::from_request(req, &())
            .await
            .map_err(|e| ApiError::bad_request("invalid_multipart", e.body_text()))?;
        let files =
            tokio::time::timeout(limits.timeout, uploaded_files(multipart, limits.max_bytes))
                .await
                .map_err(|_| body_timeout(limits.timeout))??;
        let load = LoadLimits {
            max_nesting_depth: limits.max_depth,
        };
        crate::cpu::run(move || load_files(&files, &load))
            .await
            .map_err(|e| ApiError::internal(&e))??
    } else {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!(
                "content type '{content_type}' is not supported: send application/json or multipart/form-data"
            ),
        ));
    };
    let job_id = app.pipeline.submit(&documents).await?;
    let location = format!("/v1/jobs/{job_id}");
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, location)],
        Json(JobAccepted {
            job_id,
            status: "queued".into(),
            documents: documents.len(),
        }),
    ))
}

fn json_documents(bytes: &[u8], max_depth: usize) -> Result<Vec<NewDocument>, ApiError> {
    let value = parse_value(bytes, max_depth)?;
    let (inputs, prefix): (Vec<DocumentInput>, &str) =
        match &value {
            serde_json::Value::Array(_) => (from_value(value)?, ""),
            serde_json::Value::Object(o) if o.contains_key("documents") => {
                (from_value::<DocumentBatch>(value)?.documents, "documents")
            }
            serde_json::Value::Object(_) => (vec![from_value::<DocumentInput>(value)?], "single"),
            _ => return Err(ApiError::bad_request(
                "invalid_field",
                "the body must be a document object, an array of them, or {\"documents\": [...]}",
            )),
        };
    if inputs.is_empty() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "no_documents",
            "the request holds no documents",
        )
        .param(if prefix.is_empty() { "" } else { "documents" }));
    }
    inputs
        .into_iter()
        .enumerate()
        .map(|(i, input)| {
            let at = match prefix {
                "single" => String::new(),
                "" => format!("[{i}]."),
                p => format!("{p}[{i}]."),
            };
            to_new_document(input).map_err(|e| {
                let field = e.param.clone().unwrap_or_default();
                e.param(format!("{at}{field}"))
            })
        })
        .collect()
}

fn to_new_document(input: DocumentInput) -> Result<NewDocument, ApiError> {
    if input.text.trim().is_empty() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "empty_text",
            "`text` is empty: give the document some text",
        )
        .param("text"));
    }
    if !(input.metadata.is_object() || input.metadata.is_null()) {
        return Err(
            ApiError::bad_request("invalid_field", "`metadata` must be a JSON object")
                .param("metadata"),
        );
    }
    let title = match input.title.map(|t| t.trim().to_string()) {
        Some(t) if !t.is_empty() => t,
        _ => default_title(&input.text),
    };
    Ok(NewDocument {
        title,
        text: input.text.replace("\r\n", "\n"),
        metadata: input.metadata,
        source: None,
        media_type: "text/plain".into(),
    })
}

/// The first non-empty line of `text`, cut to 80 characters.
fn default_title(text: &str) -> String {
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("");
    line.chars().take(80).collect()
}

/// Turns uploaded files into documents (CPU-bound: run it off the async threads).
fn load_files(
    files: &[(String, axum::body::Bytes)],
    limits: &LoadLimits,
) -> Result<Vec<NewDocument>, ApiError> {
    let mut documents = Vec::new();
    for (file_name, bytes) in files {
        documents.extend(loaders::load_file_with(file_name, bytes, limits)?);
    }
    Ok(documents)
}

/// Reads the `file` fields of an upload: (file name, contents) of each.
async fn uploaded_files(
    mut multipart: Multipart,
    limit: usize,
) -> Result<Vec<(String, axum::body::Bytes)>, ApiError> {
    let mut files = Vec::new();
    loop {
        let field = multipart
            .next_field()
            .await
            .map_err(|e| multipart_error(&e, limit))?;
        let Some(field) = field else { break };
        let name = field.name().unwrap_or("").to_string();
        if name != "file" {
            return Err(ApiError::bad_request(
                "invalid_field",
                format!("unexpected form field '{name}': upload files in fields named `file`"),
            )
            .param(name));
        }
        let file_name = field.file_name().unwrap_or("").to_string();
        if file_name.is_empty() {
            return Err(ApiError::bad_request(
                "invalid_field",
                "each `file` field needs a file name (its extension picks the format)",
            )
            .param("file"));
        }
        let bytes = field
            .bytes()
            .await
            .map_err(|e| multipart_error(&e, limit))?;
        files.push((file_name, bytes));
    }
    if files.is_empty() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "no_documents",
            "the upload holds no `file` fields",
        )
        .param("file"));
    }
    Ok(files)
}

fn multipart_error(e: &axum::extract::multipart::MultipartError, limit: usize) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE || is_length_limit(e) {
        too_large(limit)
    } else {
        ApiError::bad_request(
            "invalid_multipart",
            format!("malformed multipart body: {}", e.body_text()),
        )
    }
}

/// List documents, newest first.
#[utoipa::path(get, path = "/v1/documents", tag = "documents", params(ListParams),
    responses((status = 200, body = DocumentPage), (status = 400, body = ErrorEnvelope)))]
pub async fn list(
    State(app): State<Arc<App>>,
    params: Result<Query<ListParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<DocumentPage>, ApiError> {
    let Query(params) =
        params.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let limit = params.limit.unwrap_or(50);
    if !(1..=1000).contains(&limit) {
        return Err(
            ApiError::bad_request("invalid_field", "`limit` must be between 1 and 1000")
                .param("limit"),
        );
    }
    let offset = params.offset.unwrap_or(0);
    if offset < 0 {
        return Err(
            ApiError::bad_request("invalid_field", "`offset` must not be negative").param("offset"),
        );
    }
    let q = params.q.as_deref().map(str::trim).filter(|q| !q.is_empty());
    Ok(Json(app.store.list_documents(limit, offset, q).await?))
}

/// A document with its text and passages.
#[utoipa::path(get, path = "/v1/documents/{id}", tag = "documents",
    params(("id" = String, Path, description = "Document id")),
    responses((status = 200, body = DocumentRecord), (status = 404, body = ErrorEnvelope)))]
pub async fn get(
    State(app): State<Arc<App>>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<DocumentRecord>, ApiError> {
    let Path(id) = id?;
    app.store
        .get_document(&id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found("document", &id))
}

/// Delete a document from the store and every index.
#[utoipa::path(delete, path = "/v1/documents/{id}", tag = "documents",
    params(("id" = String, Path, description = "Document id")),
    responses((status = 204, description = "Deleted"), (status = 401, body = ErrorEnvelope), (status = 404, body = ErrorEnvelope),
        (status = 409, description = "The document is being indexed (`document_busy`, with Retry-After)", body = ErrorEnvelope)))]
pub async fn delete(
    State(app): State<Arc<App>>,
    id: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let Path(id) = id?;
    if app.pipeline.delete_document(&id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("document", &id))
    }
}
