//! Retrievers behind one trait: [`bm25`], [`dense`], [`hybrid`] (reciprocal-rank fusion of the two), and the
//! knowledge-graph retrievers [`hipporag`] (HippoRAG v1) and [`hipporag2`] (HippoRAG 2).

pub mod bm25;
pub mod dense;
pub mod hipporag;
pub mod hipporag2;
pub mod hybrid;
mod linking;

use crate::index::{DenseError, IndexError};
use crate::store::{PassageRecord, StoreError};
use serde::Serialize;

/// Errors of the retrieval layer.
#[derive(Debug, thiserror::Error)]
pub enum RetrieveError {
    /// The index failed.
    #[error(transparent)]
    Index(#[from] IndexError),
    /// Embedding the query or searching the vectors failed.
    #[error(transparent)]
    Dense(#[from] DenseError),
    /// The store failed while loading passages.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The knowledge graph's vectors failed.
    #[error(transparent)]
    Graph(#[from] crate::graph::GraphError),
    /// The retrieval method is not known or not available.
    #[error("unknown retrieval method '{0}': available methods are {1}")]
    UnknownMethod(String, String),
    /// A blocking task failed.
    #[error("background task failed: {0}")]
    Task(String),
}

/// A passage with its retrieval score.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ScoredPassage {
    /// The passage.
    #[serde(flatten)]
    pub passage: PassageRecord,
    /// Retriever-specific score (higher is better).
    pub score: f32,
}

/// A phrase node that seeded a graph walk, and why.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Seed {
    /// The phrase (normalised).
    pub phrase: String,
    /// Its share of the restart distribution (seeds of one query sum to at most 1).
    pub weight: f64,
    /// What linked it: the question entity or the matched fact (`subject relation object`).
    pub matched: String,
}

/// Passages with the reasons a graph retriever ranked them so.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Retrieval {
    /// Passages, best first.
    pub passages: Vec<ScoredPassage>,
    /// Phrase seeds of the Personalized PageRank walk (empty for retrievers without a graph, or when nothing
    /// linked and the retriever fell back to another method).
    pub seeds: Vec<Seed>,
}

/// Ranks passages for a query.
#[async_trait::async_trait]
pub trait Retriever: Send + Sync {
    /// The method name used in requests (`bm25`, ...).
    fn name(&self) -> &'static str;
    /// The best `top_k` passages for `query`, best first.
    async fn retrieve(
        &self,
        query: &str,
        top_k: usize,
    ) -> Result<Vec<ScoredPassage>, RetrieveError>;
    /// Like [`Retriever::retrieve`], with the seeds of a graph walk where there is one.
    async fn retrieve_explained(
        &self,
        query: &str,
        top_k: usize,
    ) -> Result<Retrieval, RetrieveError> {
        Ok(Retrieval {
            passages: self.retrieve(query, top_k).await?,
            seeds: Vec::new(),
        })
    }
}

/// The retrievers a deployment offers, looked up by name.
#[derive(Clone, Default)]
pub struct Retrievers {
    by_name: Vec<std::sync::Arc<dyn Retriever>>,
}

impl std::fmt::Debug for Retrievers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.names()).finish()
    }
}

impl Retrievers {
    /// Adds a retriever (a later one with the same name replaces the earlier).
    pub fn with(mut self, r: std::sync::Arc<dyn Retriever>) -> Self {
        self.by_name.retain(|x| x.name() != r.name());
        self.by_name.push(r);
        self
    }

    /// The names on offer.
    pub fn names(&self) -> Vec<&'static str> {
        self.by_name.iter().map(|r| r.name()).collect()
    }

    /// The retriever called `name`.
    pub fn get(&self, name: &str) -> Result<std::sync::Arc<dyn Retriever>, RetrieveError> {
        self.by_name
            .iter()
            .find(|r| r.name() == name)
            .cloned()
            .ok_or_else(|| RetrieveError::UnknownMethod(name.to_string(), self.names().join(", ")))
    }
}

/// Loads passages for ranked ids from the store, keeping the ranking and dropping ids the store no longer has.
pub async fn hydrate(
    store: &crate::store::Store,
    ranked: &[(i64, f32)],
) -> Result<Vec<ScoredPassage>, RetrieveError> {
    let ids: Vec<i64> = ranked.iter().map(|r| r.0).collect();
    let mut by_id: std::collections::HashMap<i64, PassageRecord> = store
        .passages_by_ids(&ids)
        .await?
        .into_iter()
        .map(|p| (p.id, p))
        .collect();
    Ok(ranked
        .iter()
        .filter_map(|&(id, score)| {
            by_id
                .remove(&id)
                .map(|passage| ScoredPassage { passage, score })
        })
        .collect())
}
