//! Dense retrieval: the query's embedding against passage vectors.

use super::{hydrate, RetrieveError, Retriever, ScoredPassage};
use crate::index::DenseIndex;
use crate::store::Store;

/// Nearest passages by cosine similarity of sentence embeddings.
#[derive(Debug, Clone)]
pub struct DenseRetriever {
    index: DenseIndex,
    store: Store,
}

impl DenseRetriever {
    /// A retriever over `index`, loading passages from `store`.
    pub fn new(index: DenseIndex, store: Store) -> Self {
        Self { index, store }
    }
}

#[async_trait::async_trait]
impl Retriever for DenseRetriever {
    fn name(&self) -> &'static str {
        "dense"
    }

    async fn retrieve(
        &self,
        query: &str,
        top_k: usize,
    ) -> Result<Vec<ScoredPassage>, RetrieveError> {
        let ranked = self.index.search(query, top_k).await?;
        hydrate(&self.store, &ranked).await
    }
}
