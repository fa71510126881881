//! `hipporag2`: HippoRAG 2 retrieval. The question is matched densely against facts (triples embedded as
//! `subject relation object`); the phrases of the top facts seed Personalized PageRank over the full graph (phrase
//! and passage nodes) with weight fact score / |P_i|; every passage node is seeded with `passage_weight` × its
//! min–max normalised dense score; passages are ranked by their own PPR mass. When no fact matches, it is plain
//! dense retrieval.

use super::{hydrate, Retrieval, RetrieveError, Retriever, ScoredPassage, Seed};
use crate::graph::index::fact_text;
use crate::graph::ppr::{personalized_pagerank, PprConfig};
use crate::graph::{GraphError, GraphIndex, GraphVectors};
use crate::index::vectors::{VectorError, VectorStore};
use crate::index::DenseIndex;
use crate::store::Store;
use std::collections::{HashMap, HashSet};

/// HippoRAG 2 over the knowledge graph and the dense passage index.
#[derive(Debug, Clone)]
pub struct HippoRag2Retriever {
    graph: GraphIndex,
    dense: DenseIndex,
    store: Store,
}

/// Min–max normalisation to [0, 1] (all ones when every value is equal), against `floor` when it is lower than
/// every value (the minimum over the whole collection, of which `values` are the best).
fn min_max(values: &[f32], floor: Option<f32>) -> Vec<f64> {
    let lo = values.iter().copied().fold(f32::INFINITY, f32::min);
    let lo = floor.map_or(lo, |f| f.min(lo));
    let hi = values.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    values
        .iter()
        .map(|&v| {
            if hi > lo {
                f64::from((v - lo) / (hi - lo))
            } else {
                1.0
            }
        })
        .collect()
}

/// The lowest cosine similarity of `query` to any point of `store`: minus the best similarity of the negated
/// query. HippoRAG 2 min–max normalises over every fact and every passage; this gives the same floor from a
/// nearest-neighbour index without scoring the whole collection.
async fn lowest_similarity(
    store: &dyn VectorStore,
    query: &[f32],
) -> Result<Option<f32>, VectorError> {
    let negated: Vec<f32> = query.iter().map(|x| -x).collect();
    Ok(store.search(&negated, 1).await?.first().map(|h| -h.1))
}

impl HippoRag2Retriever {
    /// A retriever over `graph` (which must have vectors) and `dense`, loading passages from `store`.
    pub fn new(graph: GraphIndex, dense: DenseIndex, store: Store) -> Self {
        Self {
            graph,
            dense,
            store,
        }
    }

    fn vectors(&self) -> Result<&GraphVectors, RetrieveError> {
        self.graph.vectors().ok_or_else(|| {
            RetrieveError::UnknownMethod(
                "hipporag2".into(),
                "the graph has no vectors (embedding disabled)".into(),
            )
        })
    }

    /// Phrase seeds from the question's best facts: (phrase id, weight, fact text).
    async fn fact_seeds(
        &self,
        query: &[f32],
        passage_prior: &HashMap<i64, f64>,
    ) -> Result<Vec<(i64, f64, String)>, RetrieveError> {
        let cfg = self.graph.config();
        let hits = self
            .vectors()?
            .facts
            .search(query, cfg.fact_candidates)
            .await
            .map_err(GraphError::from)?;
        if hits.is_empty() {
            return Ok(Vec::new());
        }
        let floor = lowest_similarity(self.vectors()?.facts.as_ref(), query)
            .await
            .map_err(GraphError::from)?;
        let norm = min_max(&hits.iter().map(|h| h.1).collect::<Vec<_>>(), floor);
        let g = self.graph.read();
        let mut seen = HashSet::new();
        let mut facts = Vec::new();
        let mut candidates: Vec<(i64, f64)> = hits
            .iter()
            .zip(norm)
            .map(|((id, _), score)| {
                let prior = match (cfg.fact_passage_prior, g.triple(*id)) {
                    (true, Some(t)) => passage_prior.get(&t.passage_id).copied().unwrap_or(0.0),
                    _ => 1.0,
                };
                (*id, score * prior)
            })
            .collect();
        candidates.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        for (id, score) in candidates {
            let Some(t) = g.triple(id) else { continue };
            let (s, o) = (
                g.phrase_text(t.subject_id).unwrap_or_default(),
                g.phrase_text(t.object_id).unwrap_or_default(),
            );
            let text = fact_text(s, &t.relation, o);
            if !seen.insert(text.clone()) {
                continue;
            }
            facts.push((t.subject_id, t.object_id, score, text));
            if facts.len() == cfg.seed_facts {
                break;
            }
        }
        // Each phrase: fact score, averaged over its occurrences (specificity is applied by the caller).
        let mut by_phrase: HashMap<i64, (f64, u32, String)> = HashMap::new();
        for (s, o, score, text) in facts {
            for p in [s, o] {
                let e = by_phrase.entry(p).or_insert((0.0, 0, text.clone()));
                e.0 += score;
                e.1 += 1;
            }
        }
        Ok(by_phrase
            .into_iter()
            .map(|(p, (sum, n, text))| (p, sum / f64::from(n), text))
            .collect())
    }
}

#[async_trait::async_trait]
impl Retriever for HippoRag2Retriever {
    fn name(&self) -> &'static str {
        "hipporag2"
    }

    async fn retrieve(
        &self,
        query: &str,
        top_k: usize,
    ) -> Result<Vec<ScoredPassage>, RetrieveError> {
        Ok(self.retrieve_explained(query, top_k).await?.passages)
    }

    async fn retrieve_explained(
        &self,
        query: &str,
        top_k: usize,
    ) -> Result<Retrieval, RetrieveError> {
        let cfg = self.graph.config().clone();
        let mut q = self.dense.embed(vec![query.to_string()]).await?;
        let qv = q.pop().map(|e| e.vector).unwrap_or_default();
        let dense = self
            .dense
            .vectors()
            .search(&qv, cfg.dense_candidates)
            .await
            .map_err(crate::index::DenseError::from)?;
        let floor = lowest_similarity(self.dense.vectors().as_ref(), &qv)
            .await
            .map_err(crate::index::DenseError::from)?;
        let norm = min_max(&dense.iter().map(|d| d.1).collect::<Vec<_>>(), floor);
        let passage_prior: HashMap<i64, f64> = dense
            .iter()
            .map(|d| d.0)
            .zip(norm.iter().copied())
            .collect();
        let phrase_seeds = self.fact_seeds(&qv, &passage_prior).await?;
        let snap = self.graph.snapshot();
        let mut seeds: Vec<(u32, f64, String)> = phrase_seeds
            .into_iter()
            .filter_map(|(p, score, text)| {
                let node = *snap.phrase_index.get(&p)?;
                let specificity = 1.0 / f64::from(snap.phrase_passages[node as usize].max(1));
                Some((node, score * specificity, text))
            })
            .filter(|s| s.1 > 0.0)
            .collect();
        seeds.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        seeds.truncate(cfg.seed_phrases);
        if seeds.is_empty() {
            // Nothing links: plain dense retrieval.
            let ranked: Vec<(i64, f32)> = dense.into_iter().take(top_k).collect();
            return Ok(Retrieval {
                passages: hydrate(&self.store, &ranked).await?,
                seeds: Vec::new(),
            });
        }
        let np = snap.phrase_ids.len();
        let mut reset: Vec<(u32, f64)> = seeds.iter().map(|s| (s.0, s.1)).collect();
        for ((id, _), score) in dense.iter().zip(norm) {
            if let Some(&node) = snap.passage_index.get(id) {
                reset.push((node, score * cfg.passage_weight));
            }
        }
        let total: f64 = reset.iter().map(|r| r.1).sum();
        let ppr = personalized_pagerank(
            &snap.full_graph,
            &reset,
            &PprConfig {
                damping: cfg.damping,
                tolerance: cfg.tolerance,
                ..PprConfig::default()
            },
        );
        let mut ranked: Vec<(i64, f32)> = snap
            .passage_ids
            .iter()
            .enumerate()
            .map(|(i, id)| (*id, ppr.scores[np + i] as f32))
            .filter(|r| r.1 > 0.0)
            .collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        ranked.truncate(top_k);
        let mut passages = hydrate(&self.store, &ranked).await?;
        if passages.len() < top_k {
            // Passages outside the graph (not yet extracted) can still come from the dense ranking.
            let have: HashSet<i64> = passages.iter().map(|p| p.passage.id).collect();
            let extra: Vec<(i64, f32)> = dense
                .iter()
                .filter(|d| !have.contains(&d.0))
                .take(top_k - passages.len())
                .map(|d| (d.0, 0.0))
                .collect();
            passages.extend(hydrate(&self.store, &extra).await?);
        }
        let g = self.graph.read();
        let seeds = seeds
            .into_iter()
            .map(|(node, w, text)| Seed {
                phrase: g
                    .phrase_text(snap.phrase_ids[node as usize])
                    .unwrap_or_default()
                    .to_string(),
                weight: w / total,
                matched: text,
            })
            .collect();
        Ok(Retrieval { passages, seeds })
    }
}

#[cfg(test)]
mod tests {
    use super::min_max;

    #[test]
    fn min_max_uses_the_collection_floor() {
        assert_eq!(min_max(&[0.9, 0.5], None), vec![1.0, 0.0]);
        let n = min_max(&[0.9, 0.5], Some(0.1));
        assert!(
            (n[0] - 1.0).abs() < 1e-6 && (n[1] - 0.5).abs() < 1e-6,
            "{n:?}"
        );
        assert_eq!(min_max(&[0.3, 0.3], None), vec![1.0, 1.0]);
    }
}
