//! The knowledge graph of HippoRAG and HippoRAG 2: phrase and passage nodes, relation, synonym and context edges
//! ([`knowledge`]), kept in step with the store as passages arrive and leave ([`index`]), and Personalized
//! PageRank over it ([`ppr`]).

pub mod index;
pub mod knowledge;
pub mod ppr;

pub use index::{GraphError, GraphIndex, GraphVectors};
pub use knowledge::{GraphStats, KnowledgeGraph, Snapshot};

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Who extracts entities and triples (`graph.extractor`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExtractorChoice {
    /// The generation model when one is loaded from a model directory; else the rule-based fallback (a
    /// `synthetic:` model has random weights, whose extractions would only add noise to the graph).
    Auto,
    /// The generation model, synthetic ones included; start-up fails without one.
    Llm,
    /// The rule-based fallback, even with a model.
    Fallback,
}

/// Knowledge-graph settings (`[graph]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GraphConfig {
    /// Extract triples at ingestion and offer the `hipporag` and `hipporag2` retrievers (default true).
    pub enabled: bool,
    /// Who extracts entities and triples at ingestion (and the question's entities for `hipporag`).
    pub extractor: ExtractorChoice,
    /// Most new tokens of one LLM extraction answer.
    pub llm_max_tokens: usize,
    /// Precomputed extractions in HippoRAG's JSON format; passages it lacks go to the other extractor.
    pub openie_file: Option<PathBuf>,
    /// Phrases whose embeddings have at least this cosine similarity get a synonym edge (HippoRAG: 0.8).
    pub synonym_threshold: f32,
    /// Most synonym neighbours looked up per phrase (HippoRAG: 100).
    pub synonym_neighbors: usize,
    /// Probability of following an edge in Personalized PageRank (HippoRAG: 0.5).
    pub damping: f64,
    /// PageRank stops when the L1 change of the scores falls below this.
    pub tolerance: f64,
    /// `hipporag2`: facts (triples) matched to the question that seed the walk (HippoRAG 2: 5).
    pub seed_facts: usize,
    /// `hipporag2`: most phrase seeds kept (HippoRAG 2: 5).
    pub seed_phrases: usize,
    /// `hipporag2`: weight of the dense question–passage score on passage nodes (HippoRAG 2: 0.05).
    pub passage_weight: f64,
    /// `hipporag2`: nearest facts fetched before de-duplication and the top `seed_facts` cut.
    pub fact_candidates: usize,
    /// `hipporag2`: passages scored densely for the passage seeds (the rest get none).
    pub dense_candidates: usize,
    /// `hipporag2`: weigh each candidate fact by the normalised dense score of the passage it came from before
    /// choosing the top facts: a model-free stand-in for HippoRAG 2's LLM fact filter ("recognition memory").
    /// Default true; false is the paper's method without that filter.
    pub fact_passage_prior: bool,
}

impl Default for GraphConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            extractor: ExtractorChoice::Auto,
            llm_max_tokens: 768,
            openie_file: None,
            synonym_threshold: 0.8,
            synonym_neighbors: 100,
            damping: 0.5,
            tolerance: 1e-8,
            seed_facts: 5,
            seed_phrases: 5,
            passage_weight: 0.05,
            fact_candidates: 50,
            dense_candidates: 2_000,
            fact_passage_prior: true,
        }
    }
}

impl GraphConfig {
    /// Checks the ranges; the error names the key (`graph.…`) and what is wrong.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        let unit = |key: &'static str, v: f64, open_top: bool| {
            let ok = v > 0.0 && (v < 1.0 || (!open_top && v <= 1.0));
            if ok {
                Ok(())
            } else {
                let range = if open_top { "(0, 1)" } else { "(0, 1]" };
                Err((key, format!("must be in {range}, got {v}")))
            }
        };
        unit(
            "graph.synonym_threshold",
            f64::from(self.synonym_threshold),
            false,
        )?;
        unit("graph.damping", self.damping, true)?;
        unit("graph.tolerance", self.tolerance, true)?;
        if !(0.0..=1.0).contains(&self.passage_weight) {
            return Err((
                "graph.passage_weight",
                format!("must be in [0, 1], got {}", self.passage_weight),
            ));
        }
        for (key, v) in [
            ("graph.synonym_neighbors", self.synonym_neighbors),
            ("graph.seed_facts", self.seed_facts),
            ("graph.seed_phrases", self.seed_phrases),
            ("graph.fact_candidates", self.fact_candidates),
            ("graph.dense_candidates", self.dense_candidates),
        ] {
            if v == 0 || v > 100_000 {
                return Err((key, format!("must be between 1 and 100000, got {v}")));
            }
        }
        if self.fact_candidates < self.seed_facts {
            return Err((
                "graph.fact_candidates",
                format!(
                    "must be at least graph.seed_facts ({}), got {}",
                    self.seed_facts, self.fact_candidates
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_name_their_key() {
        assert!(GraphConfig::default().validate().is_ok());
        let bad = GraphConfig {
            damping: 1.0,
            ..GraphConfig::default()
        };
        assert_eq!(bad.validate().unwrap_err().0, "graph.damping");
        let bad = GraphConfig {
            fact_candidates: 2,
            ..GraphConfig::default()
        };
        assert_eq!(bad.validate().unwrap_err().0, "graph.fact_candidates");
    }
}
