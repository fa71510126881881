//! The one place where errors become HTTP responses: `{"error":{"message","type","param","code"}}`.

use crate::ingest::loaders::LoadError;
use crate::ingest::pipeline::IngestError;
use crate::qa::iterative::IterativeError;
use crate::qa::{AnswerError, QaError};
use crate::retrieve::RetrieveError;
use crate::store::StoreError;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

/// An error answer: status, stable machine-readable code, message saying what to fix, and the offending parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable code, e.g. `invalid_json`.
    pub code: &'static str,
    /// Human-readable explanation.
    pub message: String,
    /// The request field at fault, if any (e.g. `documents[2].text`).
    pub param: Option<String>,
    /// Seconds after which a retry may succeed (sent as `Retry-After`), for 429 and 503 answers.
    pub retry_after: Option<u64>,
}

/// The body of every error response.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorEnvelope {
    /// The error.
    pub error: ErrorBody,
}

/// The fields of an error.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// What went wrong and how to fix it.
    pub message: String,
    /// Error class: `invalid_request_error`, `authentication_error`, `permission_error`, `not_found_error` or
    /// `server_error`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The request field at fault, or null.
    pub param: Option<String>,
    /// Stable machine-readable code.
    pub code: &'static str,
}

impl ApiError {
    /// An error with no parameter.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            param: None,
            retry_after: None,
        }
    }

    /// Asks the client to retry after `secs` seconds (`Retry-After`).
    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }

    /// Names the request field at fault.
    pub fn param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }

    /// 400 with `code`.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// 404 `not_found`.
    pub fn not_found(what: &str, id: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no {what} with id '{id}'"),
        )
    }

    /// 500 `internal_error`; the cause is logged, not returned.
    pub fn internal(cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "internal server error; see the server log",
        )
    }

    fn kind(&self) -> &'static str {
        match self.status {
            StatusCode::UNAUTHORIZED => "authentication_error",
            StatusCode::FORBIDDEN => "permission_error",
            StatusCode::NOT_FOUND => "not_found_error",
            s if s.is_server_error() => "server_error",
            _ => "invalid_request_error",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let kind = self.kind();
        let body = ErrorEnvelope {
            error: ErrorBody {
                message: self.message,
                kind,
                param: self.param,
                code: self.code,
            },
        };
        let mut res = (self.status, Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            res.headers_mut()
                .insert(axum::http::header::RETRY_AFTER, secs.into());
        }
        res
    }
}

impl From<LoadError> for ApiError {
    fn from(e: LoadError) -> Self {
        let status = match e {
            LoadError::UnsupportedType { .. } => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            LoadError::InvalidUtf8 { .. } => StatusCode::BAD_REQUEST,
            _ => StatusCode::UNPROCESSABLE_ENTITY,
        };
        ApiError::new(status, e.code(), e.to_string()).param("file")
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ApiError::internal(&e)
    }
}

impl From<IngestError> for ApiError {
    fn from(e: IngestError) -> Self {
        match e {
            IngestError::Load(l) => l.into(),
            IngestError::NoDocuments => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "no_documents",
                "the request holds no documents",
            ),
            IngestError::NulCharacter { .. } => {
                ApiError::bad_request("invalid_text", e.to_string()).param("text")
            }
            IngestError::Busy(_) => {
                ApiError::new(StatusCode::CONFLICT, "document_busy", e.to_string()).retry_after(1)
            }
            other => ApiError::internal(&other),
        }
    }
}

impl From<RetrieveError> for ApiError {
    fn from(e: RetrieveError) -> Self {
        match e {
            RetrieveError::UnknownMethod(..) => {
                ApiError::bad_request("unknown_method", e.to_string()).param("method")
            }
            other => ApiError::internal(&other),
        }
    }
}

impl From<QaError> for ApiError {
    fn from(e: QaError) -> Self {
        match e {
            QaError::EmptyQuestion => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "empty_question",
                e.to_string(),
            )
            .param("question"),
            QaError::InvalidTopK { .. } => {
                ApiError::bad_request("invalid_field", e.to_string()).param("top_k")
            }
            QaError::TooManySentencePassages { .. } => {
                ApiError::bad_request("invalid_field", e.to_string()).param("top_k")
            }
            QaError::InvalidIterations(_) => {
                ApiError::bad_request("invalid_iterations", e.to_string()).param("iterations")
            }
            QaError::InvalidAttention(_) => {
                ApiError::bad_request("invalid_parameter", e.to_string()).param("attention")
            }
            QaError::UnknownRetriever(e) => ApiError::from(e).param("retriever"),
            QaError::Rounds(IterativeError::Retrieve(e)) => e.into(),
            QaError::Answer(AnswerError::OverContext { .. }) => {
                ApiError::bad_request("context_length_exceeded", format!("{e}; lower top_k"))
                    .param("top_k")
            }
            QaError::Answer(AnswerError::Engine(e)) => e.into(),
            QaError::Attribution(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "attribution_failed",
                e.to_string(),
            ),
            other => ApiError::internal(&other),
        }
    }
}

impl From<axum::extract::rejection::PathRejection> for ApiError {
    fn from(e: axum::extract::rejection::PathRejection) -> Self {
        ApiError::bad_request(
            "invalid_path",
            format!("invalid path parameter: {}", e.body_text()),
        )
    }
}
