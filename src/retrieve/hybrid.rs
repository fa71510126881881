//! Hybrid retrieval: reciprocal-rank fusion of BM25 and dense rankings.

use super::{hydrate, RetrieveError, Retriever, ScoredPassage};
use crate::index::{DenseIndex, TextIndex};
use crate::store::Store;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;

/// Fusion settings (`[retrieval.hybrid]`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HybridConfig {
    /// Weight of the BM25 ranking.
    pub bm25_weight: f32,
    /// Weight of the dense ranking.
    pub dense_weight: f32,
    /// The RRF constant k in `weight / (k + rank)` (rank from 1).
    pub rrf_k: f32,
    /// Each ranking contributes its top `candidates × top_k` passages (at least 50).
    pub candidates: usize,
}

impl Default for HybridConfig {
    fn default() -> Self {
        Self {
            bm25_weight: 1.0,
            dense_weight: 1.0,
            rrf_k: 60.0,
            candidates: 4,
        }
    }
}

impl HybridConfig {
    /// Checks the settings; the message names the key.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.bm25_weight >= 0.0 && self.dense_weight >= 0.0)
            || self.bm25_weight + self.dense_weight <= 0.0
        {
            return Err(
                "retrieval.hybrid.bm25_weight and dense_weight must be non-negative, not both zero"
                    .into(),
            );
        }
        if !(self.rrf_k >= 0.0 && self.rrf_k.is_finite()) {
            return Err("retrieval.hybrid.rrf_k must be a non-negative number".into());
        }
        if self.candidates == 0 {
            return Err("retrieval.hybrid.candidates must be at least 1".into());
        }
        Ok(())
    }
}

/// Weighted reciprocal-rank fusion: each id scores Σ weight / (k + rank) over the rankings that hold it; ties are
/// broken by id for determinism.
pub fn reciprocal_rank_fusion(rankings: &[(&[(i64, f32)], f32)], k: f32) -> Vec<(i64, f32)> {
    let mut scores: HashMap<i64, f32> = HashMap::new();
    for (ranking, weight) in rankings {
        for (rank, (id, _)) in ranking.iter().enumerate() {
            *scores.entry(*id).or_default() += weight / (k + rank as f32 + 1.0);
        }
    }
    let mut fused: Vec<(i64, f32)> = scores.into_iter().collect();
    fused.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    fused
}

/// BM25 and dense, fused by weighted reciprocal rank.
#[derive(Debug, Clone)]
pub struct HybridRetriever {
    text: Arc<TextIndex>,
    dense: DenseIndex,
    store: Store,
    config: HybridConfig,
}

impl HybridRetriever {
    /// A hybrid retriever over both indexes.
    pub fn new(
        text: Arc<TextIndex>,
        dense: DenseIndex,
        store: Store,
        config: HybridConfig,
    ) -> Self {
        Self {
            text,
            dense,
            store,
            config,
        }
    }
}

#[async_trait::async_trait]
impl Retriever for HybridRetriever {
    fn name(&self) -> &'static str {
        "hybrid"
    }

    async fn retrieve(
        &self,
        query: &str,
        top_k: usize,
    ) -> Result<Vec<ScoredPassage>, RetrieveError> {
        let n = (top_k * self.config.candidates).max(50);
        let text = self.text.clone();
        let q = query.to_string();
        let (bm25, dense) = tokio::join!(
            crate::cpu::run(move || text.search(&q, n)),
            self.dense.search(query, n)
        );
        let dense = dense?;
        let bm25 = bm25.map_err(|e| RetrieveError::Task(e.to_string()))??;
        let mut fused = reciprocal_rank_fusion(
            &[
                (&bm25, self.config.bm25_weight),
                (&dense, self.config.dense_weight),
            ],
            self.config.rrf_k,
        );
        fused.truncate(top_k);
        hydrate(&self.store, &fused).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fusion_rewards_agreement_and_respects_weights() {
        let a = [(1, 9.0), (2, 8.0), (3, 7.0)];
        let b = [(3, 0.9), (1, 0.8), (4, 0.7)];
        let fused = reciprocal_rank_fusion(&[(&a, 1.0), (&b, 1.0)], 60.0);
        let ids: Vec<i64> = fused.iter().map(|f| f.0).collect();
        assert_eq!(ids, vec![1, 3, 2, 4]);
        let expected_1 = 1.0 / 61.0 + 1.0 / 62.0;
        assert!((fused[0].1 - expected_1).abs() < 1e-7);
        // With BM25 switched off, the dense order stands.
        let dense_only = reciprocal_rank_fusion(&[(&a, 0.0), (&b, 1.0)], 60.0);
        assert_eq!(
            dense_only.iter().take(3).map(|f| f.0).collect::<Vec<_>>(),
            vec![3, 1, 4]
        );
    }

    #[test]
    fn config_validation_names_keys() {
        let bad = HybridConfig {
            bm25_weight: 0.0,
            dense_weight: 0.0,
            ..Default::default()
        };
        assert!(bad.validate().unwrap_err().contains("bm25_weight"));
        let bad = HybridConfig {
            rrf_k: f32::NAN,
            ..Default::default()
        };
        assert!(bad.validate().unwrap_err().contains("rrf_k"));
        assert!(HybridConfig::default().validate().is_ok());
    }
}
