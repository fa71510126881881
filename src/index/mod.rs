//! Indexes derived from the store: [`text`] is the BM25 index (tantivy), [`dense`] the passage vectors (an embedder
//! over a [`vectors::VectorStore`]). Every index can be rebuilt from the store
//! (`engram reindex`).

pub mod dense;
pub mod text;
pub mod vectors;

pub use dense::{DenseError, DenseIndex};
pub use text::{IndexError, TextIndex};
