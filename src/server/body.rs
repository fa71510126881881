//! Request-body reading shared by the JSON endpoints: size limit (413), read timeout (408), content type (415),
//! UTF-8, JSON and nesting errors (400) that name the offending field. Large bodies are parsed off the async
//! threads.

use super::error::ApiError;
use crate::app::App;
use crate::ingest::nesting;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderMap, StatusCode};
use serde::de::DeserializeOwned;
use std::time::Duration;

/// Bodies up to this size are parsed on the async thread; larger ones on a blocking thread.
const INLINE_PARSE_BYTES: usize = 64 * 1024;

/// serde_json's own nesting limit (it refuses the 128th level).
const SERDE_JSON_DEPTH: usize = 127;

/// What reading and parsing one request body may cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyLimits {
    /// Largest body in bytes (`server.max_body_bytes`; 413 beyond).
    pub max_bytes: usize,
    /// Deepest JSON nesting (`limits.max_nesting_depth`; 400 `nesting_too_deep` beyond).
    pub max_depth: usize,
    /// Longest time to receive the body (`server.body_timeout_secs`; 408 `body_timeout` beyond).
    pub timeout: Duration,
}

impl BodyLimits {
    /// The limits `app` is configured with.
    pub fn of(app: &App) -> Self {
        Self {
            max_bytes: app.config.server.max_body_bytes,
            max_depth: app.config.limits.max_nesting_depth,
            timeout: Duration::from_secs(app.config.server.body_timeout_secs),
        }
    }
}

/// Reads a JSON request body into `T`: 415 unless the content type is JSON (or absent), then
/// [`read_limited`] and [`parse_json`] (on a blocking thread when the body is large).
pub async fn read_json<T: DeserializeOwned + Send + 'static>(
    app: &App,
    req: Request,
) -> Result<T, ApiError> {
    require_json(req.headers())?;
    let limits = BodyLimits::of(app);
    let bytes = read_limited(req.into_body(), &limits).await?;
    off_thread(bytes.len(), move || parse_json(&bytes, limits.max_depth)).await
}

/// Runs CPU-bound `work` over an input of `size` bytes: inline when small, else on a blocking thread
/// ([`crate::cpu::run`]).
pub async fn off_thread<T: Send + 'static>(
    size: usize,
    work: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    if size <= INLINE_PARSE_BYTES {
        return work();
    }
    crate::cpu::run(work)
        .await
        .map_err(|e| ApiError::internal(&e))?
}

/// Reads the whole body, answering 413 past `limits.max_bytes` and 408 `body_timeout` when it takes longer than
/// `limits.timeout`.
pub async fn read_limited(body: Body, limits: &BodyLimits) -> Result<axum::body::Bytes, ApiError> {
    let read = axum::body::to_bytes(body, limits.max_bytes);
    let Ok(result) = tokio::time::timeout(limits.timeout, read).await else {
        return Err(body_timeout(limits.timeout));
    };
    result.map_err(|e| {
        if is_length_limit(&e) {
            too_large(limits.max_bytes)
        } else {
            ApiError::bad_request(
                "invalid_body",
                format!("could not read the request body: {e}"),
            )
        }
    })
}

/// 408 `body_timeout`.
pub fn body_timeout(timeout: Duration) -> ApiError {
    ApiError::new(
        StatusCode::REQUEST_TIMEOUT,
        "body_timeout",
        format!(
            "the request body did not arrive within {} s (server.body_timeout_secs)",
            timeout.as_secs()
        ),
    )
}

/// Whether an error chain contains http-body's length-limit error.
pub fn is_length_limit(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if err.to_string().contains("length limit exceeded") {
            return true;
        }
        cur = err.source();
    }
    false
}

/// 413 `payload_too_large`.
pub fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        format!("the request body exceeds the limit of {limit} bytes (server.max_body_bytes); split it into smaller requests"),
    )
}

/// Answers 415 unless the content type is absent or JSON.
pub fn require_json(headers: &HeaderMap) -> Result<(), ApiError> {
    match headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    {
        None => Ok(()),
        Some(ct) if is_json(ct) => Ok(()),
        Some(ct) => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!("content type '{ct}' is not supported here: send application/json"),
        )),
    }
}

/// Whether a content type is JSON (`application/json`, `application/x+json`, with or without parameters).
pub fn is_json(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json" || essence.ends_with("+json")
}

/// Parses UTF-8 JSON bytes, nested at most `max_depth` deep, into `T`; type errors name the field path as
/// `param`.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8], max_depth: usize) -> Result<T, ApiError> {
    from_value(parse_value(bytes, max_depth)?)
}

/// 400 `nesting_too_deep`.
fn too_deep(limit: usize) -> ApiError {
    ApiError::bad_request(
        "nesting_too_deep",
        format!(
            "the request body nests JSON arrays and objects more than {limit} deep (limits.max_nesting_depth)"
        ),
    )
}

/// Parses UTF-8 JSON bytes into a JSON value (400 `invalid_utf8`, `invalid_json` or `nesting_too_deep`
/// otherwise); nesting is checked before parsing.
pub fn parse_value(bytes: &[u8], max_depth: usize) -> Result<serde_json::Value, ApiError> {
    nesting::json(bytes, max_depth).map_err(|e| too_deep(e.limit))?;
    let text = std::str::from_utf8(bytes).map_err(|e| {
        ApiError::bad_request(
            "invalid_utf8",
            format!(
                "the request body is not valid UTF-8 (at byte {})",
                e.valid_up_to()
            ),
        )
    })?;
    serde_json::from_str(text).map_err(|e| {
        if e.to_string().starts_with("recursion limit exceeded") {
            return too_deep(SERDE_JSON_DEPTH);
        }
        ApiError::bad_request(
            "invalid_json",
            format!("the request body is not valid JSON: {e}"),
        )
    })
}

/// Deserialises a JSON value into `T`; type errors name the field path as `param`.
pub fn from_value<T: DeserializeOwned>(value: serde_json::Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        let err = ApiError::bad_request(
            "invalid_field",
            format!("invalid value at `{path}`: {inner}"),
        );
        if path == "." {
            err
        } else {
            err.param(path)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    #[allow(dead_code)]
    struct T {
        a: Vec<U>,
    }
    #[derive(serde::Deserialize, Debug)]
    #[allow(dead_code)]
    struct U {
        n: u32,
    }

    #[test]
    fn json_errors_are_classified() {
        assert_eq!(parse_json::<T>(b"{", 128).unwrap_err().code, "invalid_json");
        assert_eq!(
            parse_json::<T>(b"\xff\xfe", 128).unwrap_err().code,
            "invalid_utf8"
        );
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert_eq!(
            parse_json::<T>(deep.as_bytes(), 128).unwrap_err().code,
            "nesting_too_deep"
        );
        let at_serde_limit = format!("{}{}", "[".repeat(200), "]".repeat(200));
        assert_eq!(
            parse_json::<T>(at_serde_limit.as_bytes(), 1000)
                .unwrap_err()
                .code,
            "nesting_too_deep"
        );
        let e = parse_json::<T>(br#"{"a":[{"n":1},{"n":"x"}]}"#, 128).unwrap_err();
        assert_eq!(e.code, "invalid_field");
        assert_eq!(e.param.as_deref(), Some("a[1].n"));
    }

    #[test]
    fn json_content_types() {
        assert!(is_json("application/json; charset=utf-8"));
        assert!(is_json("application/problem+json"));
        assert!(!is_json("text/plain"));
    }
}
