//! The dense passage index: an [`Embedder`] that turns text into vectors and a [`VectorStore`] that keeps them.

use super::vectors::{VectorError, VectorPoint, VectorStore};
use crate::embed::{EmbedError, Embedder, Embedding};
use crate::store::PassageRecord;
use std::sync::Arc;

/// Passages embedded per call to the embedder (and per upsert).
const EMBED_CHUNK: usize = 256;

/// Errors of the dense index.
#[derive(Debug, thiserror::Error)]
pub enum DenseError {
    /// Embedding failed.
    #[error(transparent)]
    Embed(#[from] EmbedError),
    /// The vector store failed.
    #[error(transparent)]
    Vector(#[from] VectorError),
    /// A blocking task panicked or was cancelled.
    #[error("embedding task failed: {0}")]
    Task(String),
}

/// Embeds passages and queries, and searches their vectors.
#[derive(Debug, Clone)]
pub struct DenseIndex {
    embedder: Arc<dyn Embedder>,
    vectors: Arc<dyn VectorStore>,
}

/// The text a passage is embedded as: its title, a newline, its text.
pub fn passage_text(p: &PassageRecord) -> String {
    format!("{}\n{}", p.title, p.text)
}

impl DenseIndex {
    /// A dense index over `vectors`, creating its collection for the embedder's dimension.
    pub async fn open(
        embedder: Arc<dyn Embedder>,
        vectors: Arc<dyn VectorStore>,
    ) -> Result<Self, DenseError> {
        vectors.ensure_collection(embedder.dimension()).await?;
        Ok(Self { embedder, vectors })
    }

    /// The embedding model.
    pub fn embedder(&self) -> &Arc<dyn Embedder> {
        &self.embedder
    }

    /// The vector store.
    pub fn vectors(&self) -> &Arc<dyn VectorStore> {
        &self.vectors
    }

    /// Embeds texts on a blocking thread.
    pub async fn embed(&self, texts: Vec<String>) -> Result<Vec<Embedding>, DenseError> {
        let embedder = self.embedder.clone();
        crate::cpu::run(move || {
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            embedder.embed(&refs)
        })
        .await
        .map_err(|e| DenseError::Task(e.to_string()))?
        .map_err(Into::into)
    }

    /// Embeds and stores passages (replacing any earlier vectors of the same passage ids).
    pub async fn index_passages(&self, passages: &[PassageRecord]) -> Result<(), DenseError> {
        for chunk in passages.chunks(EMBED_CHUNK) {
            let embeddings = self.embed(chunk.iter().map(passage_text).collect()).await?;
            let points: Vec<VectorPoint> = chunk
                .iter()
                .zip(embeddings)
                .map(|(p, e)| VectorPoint {
                    passage_id: p.id,
                    document_id: p.document_id.clone(),
                    vector: e.vector,
                })
                .collect();
            self.vectors.upsert(&points).await?;
        }
        Ok(())
    }

    /// The `top_k` passages nearest to `query`, as `(passage_id, cosine)`, best first.
    pub async fn search(&self, query: &str, top_k: usize) -> Result<Vec<(i64, f32)>, DenseError> {
        let mut e = self.embed(vec![query.to_string()]).await?;
        let vector = e.pop().map(|e| e.vector).unwrap_or_default();
        Ok(self.vectors.search(&vector, top_k).await?)
    }

    /// Removes a document's vectors.
    pub async fn delete_document(&self, document_id: &str) -> Result<(), DenseError> {
        Ok(self.vectors.delete_document(document_id).await?)
    }

    /// Removes every vector (for a rebuild).
    pub async fn clear(&self) -> Result<(), DenseError> {
        self.vectors.clear().await?;
        Ok(self
            .vectors
            .ensure_collection(self.embedder.dimension())
            .await?)
    }
}
