//! The document shape the store inserts: what every loader produces and the ingestion pipeline consumes.

use serde::{Deserialize, Serialize};

/// A document ready to be chunked and stored: the canonical text that passage offsets point into.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewDocument {
    /// Human-readable title (file stem, HTML `<title>`, first Markdown heading, or the JSON `title`).
    pub title: String,
    /// The document's text; passages carry byte offsets into this string.
    pub text: String,
    /// Free-form JSON metadata supplied by the caller (an object, or `null`).
    pub metadata: serde_json::Value,
    /// Where it came from: an uploaded file name or a CLI path; `None` for inline JSON.
    pub source: Option<String>,
    /// Media type of the source, e.g. `text/plain`, `text/markdown`, `text/html`, `application/pdf`, `application/json`.
    pub media_type: String,
}
