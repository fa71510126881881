//! Indexes derived from the store: [`text`] is the BM25 index (tantivy). Every index can be rebuilt from the store
//! (`engram reindex`).

pub mod text;

pub use text::{IndexError, TextIndex};
