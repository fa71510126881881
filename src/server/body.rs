//! Request-body reading shared by the JSON endpoints: size limit (413), content type (415), UTF-8 and JSON errors
//! (400) that name the offending field.

use super::error::ApiError;
use axum::body::Body;
use axum::http::{header, HeaderMap, StatusCode};
use serde::de::DeserializeOwned;

/// Reads the whole body, answering 413 past `limit` bytes.
pub async fn read_limited(body: Body, limit: usize) -> Result<axum::body::Bytes, ApiError> {
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        if is_length_limit(&e) {
            too_large(limit)
        } else {
            ApiError::bad_request(
                "invalid_body",
                format!("could not read the request body: {e}"),
            )
        }
    })
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

/// Parses UTF-8 JSON bytes into `T`; type errors name the field path as `param`.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    from_value(parse_value(bytes)?)
}

/// Parses UTF-8 JSON bytes into a JSON value (400 `invalid_utf8` or `invalid_json` otherwise).
pub fn parse_value(bytes: &[u8]) -> Result<serde_json::Value, ApiError> {
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
        assert_eq!(parse_json::<T>(b"{").unwrap_err().code, "invalid_json");
        assert_eq!(
            parse_json::<T>(b"\xff\xfe").unwrap_err().code,
            "invalid_utf8"
        );
        let e = parse_json::<T>(br#"{"a":[{"n":1},{"n":"x"}]}"#).unwrap_err();
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
