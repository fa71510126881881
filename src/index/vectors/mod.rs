//! Vector storage behind one trait: embedded `qdrant-edge` (the default, in the data dir) and a remote Qdrant
//! through `qdrant-client`.
//!
//! Both store a point per passage: the point id is the passage id (an `i64` kept bit for bit as a `u64`), the
//! vector is compared by cosine similarity, and the payload holds `document_id` (a keyword) so that
//! [`VectorStore::delete_document`] can delete by filter.

pub mod edge;
pub mod remote;

pub use edge::{EdgeOptions, EdgeStats, EdgeVectorStore};
pub use remote::{RemoteQdrant, RemoteQdrantConfig};

/// The payload key holding a point's document id.
pub const DOCUMENT_ID_KEY: &str = "document_id";

/// A passage vector to store.
#[derive(Debug, Clone, PartialEq)]
pub struct VectorPoint {
    /// The passage id (the point id).
    pub passage_id: i64,
    /// The passage's document (stored as payload, for deletion by document).
    pub document_id: String,
    /// The vector (L2-normalised).
    pub vector: Vec<f32>,
}

/// Errors of the vector stores.
#[derive(Debug, thiserror::Error)]
pub enum VectorError {
    /// The store could not be opened or reached.
    #[error("cannot open the vector store {target}: {reason}")]
    Open {
        /// Path or URL.
        target: String,
        /// Why.
        reason: String,
    },
    /// A vector has the wrong dimension for the collection.
    #[error("vector dimension {got} does not match the collection's {expected}")]
    Dimension {
        /// The collection's dimension.
        expected: usize,
        /// The vector's.
        got: usize,
    },
    /// An operation failed.
    #[error("vector store error: {0}")]
    Backend(String),
}

/// Stores passage vectors and finds nearest neighbours by cosine similarity.
#[async_trait::async_trait]
pub trait VectorStore: Send + Sync + std::fmt::Debug {
    /// Short name of the implementation (`qdrant-edge`, `qdrant`).
    fn name(&self) -> &'static str;
    /// Creates the collection for vectors of `dimension` if it does not exist (idempotent; an existing collection
    /// of another dimension is a [`VectorError::Dimension`]).
    async fn ensure_collection(&self, dimension: usize) -> Result<(), VectorError>;
    /// Inserts or replaces points (by passage id); durable when it returns.
    async fn upsert(&self, points: &[VectorPoint]) -> Result<(), VectorError>;
    /// Removes every point of a document.
    async fn delete_document(&self, document_id: &str) -> Result<(), VectorError>;
    /// Removes every point.
    async fn clear(&self) -> Result<(), VectorError>;
    /// The `top_k` nearest points to `vector`, as `(passage_id, cosine similarity)`, best first.
    async fn search(&self, vector: &[f32], top_k: usize) -> Result<Vec<(i64, f32)>, VectorError>;
    /// Number of stored points.
    async fn count(&self) -> Result<u64, VectorError>;
}

/// The point id of a passage: the `i64` reinterpreted as a `u64` (so that every id round-trips).
pub(crate) fn point_id(passage_id: i64) -> u64 {
    passage_id as u64
}

/// The passage id of a point (the inverse of [`point_id`]).
pub(crate) fn passage_id(point_id: u64) -> i64 {
    point_id as i64
}

/// Checks that every vector of `points` has `dimension` components.
pub(crate) fn check_points(points: &[VectorPoint], dimension: usize) -> Result<(), VectorError> {
    match points.iter().find(|p| p.vector.len() != dimension) {
        Some(p) => Err(VectorError::Dimension {
            expected: dimension,
            got: p.vector.len(),
        }),
        None => Ok(()),
    }
}
