//! BM25 retrieval over the tantivy index.

use super::{hydrate, RetrieveError, Retriever, ScoredPassage};
use crate::index::TextIndex;
use crate::store::Store;
use std::sync::Arc;

/// Okapi BM25 over passage title and text.
#[derive(Debug, Clone)]
pub struct Bm25Retriever {
    index: Arc<TextIndex>,
    store: Store,
}

impl Bm25Retriever {
    /// A retriever over `index`, loading passages from `store`.
    pub fn new(index: Arc<TextIndex>, store: Store) -> Self {
        Self { index, store }
    }
}

#[async_trait::async_trait]
impl Retriever for Bm25Retriever {
    fn name(&self) -> &'static str {
        "bm25"
    }

    async fn retrieve(
        &self,
        query: &str,
        top_k: usize,
    ) -> Result<Vec<ScoredPassage>, RetrieveError> {
        let index = self.index.clone();
        let q = query.to_string();
        let ranked = crate::cpu::run(move || index.search(&q, top_k))
            .await
            .map_err(|e| RetrieveError::Task(e.to_string()))??;
        hydrate(&self.store, &ranked).await
    }
}
