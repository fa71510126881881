//! Question entities and their links to phrase nodes, for the `hipporag` retriever.
//!
//! Without an LLM, a question's entities are every maximal run of question words that is itself a phrase node
//! ("phrase matching") plus the fallback extractor's spans (capitalised and numeric) outside those runs. Each entity then links to its
//! nearest phrase node by embedding (HippoRAG's linking), or to the node with the same normalised text when
//! embeddings are off.

use super::RetrieveError;
use crate::graph::{GraphIndex, KnowledgeGraph};
use crate::openie::normalize_phrase;
use std::collections::HashSet;

/// Longest run of words tried as a phrase.
const MAX_NGRAM: usize = 16;

/// Words that never make a phrase match on their own.
const STOPWORDS: &[&str] = &[
    "a", "about", "after", "also", "an", "and", "are", "as", "at", "be", "been", "before", "born",
    "by", "can", "city", "country", "did", "do", "does", "during", "first", "for", "from", "had",
    "has", "have", "he", "her", "his", "how", "in", "is", "it", "its", "last", "located", "many",
    "much", "name", "new", "not", "of", "on", "one", "or", "other", "part", "person", "place",
    "she", "than", "that", "the", "their", "there", "they", "this", "time", "to", "two", "was",
    "were", "what", "when", "where", "which", "while", "who", "whom", "whose", "why", "with",
    "year", "years",
];

/// A phrase node linked from the question.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Link {
    /// The phrase id.
    pub phrase_id: i64,
    /// The question entity that linked it.
    pub entity: String,
}

/// The question's entities, normalised and without duplicates: first every maximal run of two or more question
/// words that is itself a phrase node (longest first; a title with commas survives whole), then the fallback
/// extractor's spans that are not inside such a run. Single common words never count: they would seed the walk
/// with generic nodes.
pub(super) fn question_entities(
    question: &str,
    ner_entities: &[String],
    graph: &KnowledgeGraph,
) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut seen = HashSet::new();
    let normalized = normalize_phrase(question);
    let words: Vec<&str> = normalized.split(' ').filter(|w| !w.is_empty()).collect();
    let mut covered = vec![false; words.len()];
    for n in (2..=MAX_NGRAM.min(words.len())).rev() {
        for start in 0..=words.len() - n {
            if covered[start..start + n].iter().any(|&c| c) {
                continue;
            }
            let span = &words[start..start + n];
            if span.iter().all(|w| STOPWORDS.contains(w)) {
                continue;
            }
            let text = span.join(" ");
            if graph.phrase_by_text(&text).is_none() {
                continue;
            }
            covered[start..start + n].iter_mut().for_each(|c| *c = true);
            if seen.insert(text.clone()) {
                out.push(text);
            }
        }
    }
    let matched: Vec<String> = out.iter().map(|t| format!(" {t} ")).collect();
    for e in ner_entities {
        let n = normalize_phrase(e);
        if n.len() < 3 || STOPWORDS.contains(&n.as_str()) {
            continue;
        }
        let inside = matched.iter().any(|m| m.contains(&format!(" {n} ")));
        if !inside && seen.insert(n.clone()) {
            out.push(n);
        }
    }
    out
}

/// Links each entity to its nearest phrase node (by embedding when the graph has vectors, else by identical
/// text). Entities that link nowhere are dropped; two entities may link to the same node.
pub(super) async fn link_entities(
    graph: &GraphIndex,
    entities: &[String],
) -> Result<Vec<Link>, RetrieveError> {
    let Some(v) = graph.vectors() else {
        let g = graph.read();
        return Ok(entities
            .iter()
            .filter_map(|e| {
                g.phrase_by_text(e).map(|phrase_id| Link {
                    phrase_id,
                    entity: e.clone(),
                })
            })
            .collect());
    };
    if entities.is_empty() {
        return Ok(Vec::new());
    }
    let vectors = v.embed(entities.to_vec()).await?;
    let mut links = Vec::new();
    for (entity, vector) in entities.iter().zip(vectors) {
        // An exact match wins; otherwise the nearest phrase that is still a node of the graph.
        if let Some(phrase_id) = graph.read().phrase_by_text(entity) {
            links.push(Link {
                phrase_id,
                entity: entity.clone(),
            });
            continue;
        }
        let hits = v
            .phrases
            .search(&vector, 5)
            .await
            .map_err(crate::graph::GraphError::from)?;
        let g = graph.read();
        if let Some((phrase_id, _)) = hits.into_iter().find(|(id, _)| g.has_phrase(*id)) {
            links.push(Link {
                phrase_id,
                entity: entity.clone(),
            });
        }
    }
    Ok(links)
}
