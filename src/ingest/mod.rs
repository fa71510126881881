//! Ingestion: loaders turn uploads into [`NewDocument`](crate::store::NewDocument)s, the [`chunker`] splits them
//! into passages, and the [`pipeline`] runs persisted, resumable jobs that store and index them.
//!
//! The loaders, nesting scans and chunker live in the `engram-formats` crate (so that they build and fuzz on
//! their own) and are re-exported here under their old paths.

pub use engram_formats::{chunker, loaders, nesting};
pub mod pipeline;
