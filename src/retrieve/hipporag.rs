//! `hipporag`: HippoRAG v1 retrieval. Question entities link to phrase nodes; each linked node seeds Personalized
//! PageRank over the phrase graph with weight 1/|P_i| (node specificity: |P_i| passages mention phrase i); a passage
//! scores the PPR mass of the phrases its triples mention (once per mention). Passages the walk does not reach
//! (and every passage, when nothing links) are ranked by a fallback retriever after the graph's.

use super::linking::{link_entities, question_entities};
use super::{hydrate, Retrieval, RetrieveError, Retriever, ScoredPassage, Seed};
use crate::graph::ppr::{personalized_pagerank, PprConfig};
use crate::graph::GraphIndex;
use crate::store::Store;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// HippoRAG v1 over the knowledge graph.
pub struct HippoRagRetriever {
    graph: GraphIndex,
    store: Store,
    fallback: Arc<dyn Retriever>,
}

impl HippoRagRetriever {
    /// A retriever over `graph`, loading passages from `store`; `fallback` ranks what the walk does not reach.
    pub fn new(graph: GraphIndex, store: Store, fallback: Arc<dyn Retriever>) -> Self {
        Self {
            graph,
            store,
            fallback,
        }
    }

    /// The graph-ranked passages for `query` (passage id, score) and the seeds, without fallback filling.
    pub async fn rank(&self, query: &str) -> Result<(Vec<(i64, f32)>, Vec<Seed>), RetrieveError> {
        // The graph's extractor finds the question's entities too (the LLM's when it extracts the passages).
        let ner = self.graph.extractor().clone();
        let question = query.to_string();
        let found = tokio::task::spawn_blocking(move || ner.question_entities(&question))
            .await
            .map_err(|e| RetrieveError::Task(e.to_string()))?
            .map_err(|e| RetrieveError::Graph(e.into()))?;
        let entities = question_entities(query, &found, &self.graph.read());
        let links = link_entities(&self.graph, &entities).await?;
        let snap = self.graph.snapshot();
        let mut weights: HashMap<u32, (f64, Vec<String>)> = HashMap::new();
        for link in links {
            if let Some(&node) = snap.phrase_index.get(&link.phrase_id) {
                let specificity = 1.0 / f64::from(snap.phrase_passages[node as usize].max(1));
                let entry = weights.entry(node).or_insert((specificity, Vec::new()));
                entry.1.push(link.entity);
            }
        }
        if weights.is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        let mut reset: Vec<(u32, f64)> = weights.iter().map(|(n, (w, _))| (*n, *w)).collect();
        reset.sort_by_key(|r| r.0);
        let total: f64 = reset.iter().map(|r| r.1).sum();
        let cfg = self.graph.config();
        let ppr = personalized_pagerank(
            &snap.phrase_graph,
            &reset,
            &PprConfig {
                damping: cfg.damping,
                tolerance: cfg.tolerance,
                ..PprConfig::default()
            },
        );
        let mut ranked: Vec<(i64, f32)> = snap
            .passage_mentions
            .iter()
            .zip(&snap.passage_ids)
            .map(|(mentions, id)| {
                let s: f64 = mentions.iter().map(|&n| ppr.scores[n as usize]).sum();
                (*id, s as f32)
            })
            .filter(|(_, s)| *s > 0.0)
            .collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let g = self.graph.read();
        let mut seeds: Vec<Seed> = weights
            .into_iter()
            .map(|(node, (w, entities))| Seed {
                phrase: g
                    .phrase_text(snap.phrase_ids[node as usize])
                    .unwrap_or_default()
                    .to_string(),
                weight: w / total,
                matched: entities.join(", "),
            })
            .collect();
        seeds.sort_by(|a, b| b.weight.total_cmp(&a.weight).then(a.phrase.cmp(&b.phrase)));
        Ok((ranked, seeds))
    }
}

impl std::fmt::Debug for HippoRagRetriever {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HippoRagRetriever")
            .field("fallback", &self.fallback.name())
            .finish()
    }
}

/// Appends the fallback's passages that are not already ranked, with scores below every graph score.
pub(super) async fn fill_from(
    fallback: &dyn Retriever,
    query: &str,
    top_k: usize,
    mut passages: Vec<ScoredPassage>,
) -> Result<Vec<ScoredPassage>, RetrieveError> {
    if passages.len() >= top_k {
        passages.truncate(top_k);
        return Ok(passages);
    }
    let have: HashSet<i64> = passages.iter().map(|p| p.passage.id).collect();
    let floor = passages.last().map_or(0.0, |p| p.score);
    let extra = fallback.retrieve(query, top_k).await?;
    let n = extra.len() as f32;
    for (i, mut p) in extra.into_iter().enumerate() {
        if passages.len() >= top_k {
            break;
        }
        if have.contains(&p.passage.id) {
            continue;
        }
        // Below the graph's scores, keeping the fallback's order.
        p.score = floor * (n - i as f32) / (n + 1.0) * 0.5;
        passages.push(p);
    }
    Ok(passages)
}

#[async_trait::async_trait]
impl Retriever for HippoRagRetriever {
    fn name(&self) -> &'static str {
        "hipporag"
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
        let (mut ranked, seeds) = self.rank(query).await?;
        ranked.truncate(top_k);
        let passages = hydrate(&self.store, &ranked).await?;
        let passages = fill_from(self.fallback.as_ref(), query, top_k, passages).await?;
        Ok(Retrieval { passages, seeds })
    }
}
