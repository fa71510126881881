//! The graph neighbourhood of an answer: the knowledge graph's relations inside the retrieved passages.

use crate::graph::KnowledgeGraph;
use crate::qa::types::QaRelation;
use crate::retrieve::Seed;
use std::collections::HashSet;

/// Most relations listed per retrieved passage in the `relations` of an answer.
pub const RELATIONS_PER_PASSAGE: usize = 3;

/// The relations of each passage in `passages` (ids, in rank order), those touching a seed phrase first, at most
/// [`RELATIONS_PER_PASSAGE`] each, without repeats within a passage.
pub fn neighbourhood(graph: &KnowledgeGraph, passages: &[i64], seeds: &[Seed]) -> Vec<QaRelation> {
    let seeds: HashSet<&str> = seeds.iter().map(|s| s.phrase.as_str()).collect();
    let mut out = Vec::new();
    for (index, &id) in passages.iter().enumerate() {
        let mut rows: Vec<QaRelation> = Vec::new();
        for t in graph.triples_of(id) {
            let (Some(subject), Some(object)) = (
                graph.phrase_text(t.subject_id),
                graph.phrase_text(t.object_id),
            ) else {
                continue;
            };
            let r = QaRelation {
                seed: seeds.contains(subject) || seeds.contains(object),
                subject: subject.to_string(),
                relation: t.relation.clone(),
                object: object.to_string(),
                passage: index,
            };
            if !rows.contains(&r) {
                rows.push(r);
            }
        }
        // Stable: extraction order within each group.
        rows.sort_by_key(|r| !r.seed);
        rows.truncate(RELATIONS_PER_PASSAGE);
        out.extend(rows);
    }
    out
}
