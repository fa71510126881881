//! Engram's document formats, kept apart from the server so that they build (and fuzz) on their own: the
//! [`loaders`] that turn uploaded bytes into [`NewDocument`]s, the [`nesting`] scans that refuse hostile nesting
//! before a parser sees it, and the [`chunker`] that splits text into passages.

pub mod chunker;
pub mod document;
pub mod loaders;
pub mod nesting;

pub use document::NewDocument;
