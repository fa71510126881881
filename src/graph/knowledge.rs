//! The mutable knowledge graph (petgraph): phrase and passage nodes with relation, synonym and context edges,
//! updated passage by passage, and the compact [`Snapshot`] that retrieval runs Personalized PageRank on.

use super::ppr::Csr;
use crate::store::{GraphRows, TripleRow};
use petgraph::stable_graph::{NodeIndex, StableUnGraph};
use std::collections::HashMap;
use std::sync::Arc;

/// A node of the graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Node {
    /// A phrase (its id in the store).
    Phrase(i64),
    /// A passage (its id in the store).
    Passage(i64),
}

/// The weights of the edge between two nodes, by kind (an edge may be of several kinds at once).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Edge {
    /// Number of triples linking the two phrases (either direction).
    relation: f32,
    /// Cosine similarity of the two phrases' embeddings (0 when not synonyms).
    synonym: f32,
    /// 1 between a passage and a phrase of its triples (HippoRAG 2's context edge).
    context: f32,
}

impl Edge {
    fn is_empty(&self) -> bool {
        self.relation <= 0.0 && self.synonym <= 0.0 && self.context <= 0.0
    }
}

#[derive(Debug)]
struct PhraseEntry {
    node: Option<NodeIndex>,
    text: String,
    /// Passage id -> number of times the passage's triples mention the phrase.
    passages: HashMap<i64, u32>,
}

#[derive(Debug)]
struct PassageEntry {
    node: NodeIndex,
    document_id: String,
    triples: Vec<TripleRow>,
}

/// The knowledge graph. Phrase nodes exist while some passage's triples mention them; synonym edges are remembered
/// for every phrase and drawn whenever both ends are present.
#[derive(Debug, Default)]
pub struct KnowledgeGraph {
    graph: StableUnGraph<Node, Edge>,
    phrases: HashMap<i64, PhraseEntry>,
    by_text: HashMap<String, i64>,
    passages: HashMap<i64, PassageEntry>,
    documents: HashMap<String, Vec<i64>>,
    /// Triple id -> the passage it belongs to.
    triple_passage: HashMap<i64, i64>,
    synonyms: HashMap<i64, Vec<(i64, f32)>>,
    snapshot: Option<Arc<Snapshot>>,
}

/// Sizes of the graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct GraphStats {
    /// Phrase nodes.
    pub phrases: usize,
    /// Passage nodes.
    pub passages: usize,
    /// Phrase–phrase relation edges.
    pub relation_edges: usize,
    /// Phrase–phrase synonym edges.
    pub synonym_edges: usize,
    /// Passage–phrase context edges.
    pub context_edges: usize,
}

impl KnowledgeGraph {
    /// A graph built from the store's rows.
    pub fn from_rows(rows: GraphRows) -> Self {
        let mut g = Self::default();
        for (id, text) in rows.phrases {
            g.add_phrase(id, text);
        }
        g.add_synonyms(&rows.synonyms);
        let mut by_passage: HashMap<i64, Vec<TripleRow>> = HashMap::new();
        for t in rows.triples {
            by_passage.entry(t.passage_id).or_default().push(t);
        }
        for (id, document_id) in rows.extracted {
            let triples = by_passage.remove(&id).unwrap_or_default();
            g.add_passage(id, &document_id, triples);
        }
        g
    }

    /// Makes a phrase's text known (its node appears when a passage mentions it).
    pub fn add_phrase(&mut self, id: i64, text: String) {
        self.by_text.entry(text.clone()).or_insert(id);
        self.phrases.entry(id).or_insert(PhraseEntry {
            node: None,
            text,
            passages: HashMap::new(),
        });
    }

    /// Records synonym edges `(a, b, cosine)`; drawn now where both phrases have nodes, later otherwise.
    pub fn add_synonyms(&mut self, pairs: &[(i64, i64, f64)]) {
        for &(a, b, w) in pairs {
            if a == b {
                continue;
            }
            for (x, y) in [(a, b), (b, a)] {
                let list = self.synonyms.entry(x).or_default();
                if !list.iter().any(|e| e.0 == y) {
                    list.push((y, w as f32));
                }
            }
            if let (Some(na), Some(nb)) = (self.phrase_node(a), self.phrase_node(b)) {
                self.edge_mut(na, nb).synonym = w as f32;
            }
        }
        self.snapshot = None;
    }

    /// Adds (or replaces) a passage and its triples. Phrases must be known ([`KnowledgeGraph::add_phrase`]).
    pub fn add_passage(&mut self, passage_id: i64, document_id: &str, triples: Vec<TripleRow>) {
        self.remove_passage(passage_id);
        let node = self.graph.add_node(Node::Passage(passage_id));
        for t in &triples {
            self.triple_passage.insert(t.id, passage_id);
            let (Some(s), Some(o)) = (
                self.attach(t.subject_id, passage_id),
                self.attach(t.object_id, passage_id),
            ) else {
                continue;
            };
            if s != o {
                self.edge_mut(s, o).relation += 1.0;
            }
            self.edge_mut(node, s).context = 1.0;
            self.edge_mut(node, o).context = 1.0;
        }
        self.documents
            .entry(document_id.to_string())
            .or_default()
            .push(passage_id);
        self.passages.insert(
            passage_id,
            PassageEntry {
                node,
                document_id: document_id.to_string(),
                triples,
            },
        );
        self.snapshot = None;
    }

    /// Removes a passage: its node, its context edges, its share of relation edges, and phrases no passage
    /// mentions any more.
    pub fn remove_passage(&mut self, passage_id: i64) {
        let Some(entry) = self.passages.remove(&passage_id) else {
            return;
        };
        for t in &entry.triples {
            self.triple_passage.remove(&t.id);
            let (s, o) = (
                self.phrase_node(t.subject_id),
                self.phrase_node(t.object_id),
            );
            if let (Some(s), Some(o)) = (s, o) {
                if s != o {
                    if let Some(e) = self.graph.find_edge(s, o) {
                        let w = &mut self.graph[e];
                        w.relation -= 1.0;
                        if w.is_empty() {
                            self.graph.remove_edge(e);
                        }
                    }
                }
            }
            for phrase in [t.subject_id, t.object_id] {
                self.detach(phrase, passage_id);
            }
        }
        self.graph.remove_node(entry.node);
        if let Some(list) = self.documents.get_mut(&entry.document_id) {
            list.retain(|&p| p != passage_id);
            if list.is_empty() {
                self.documents.remove(&entry.document_id);
            }
        }
        self.snapshot = None;
    }

    /// Removes every passage of a document; returns how many there were.
    pub fn remove_document(&mut self, document_id: &str) -> usize {
        let ids = self.documents.get(document_id).cloned().unwrap_or_default();
        for id in &ids {
            self.remove_passage(*id);
        }
        ids.len()
    }

    /// The phrase id of a normalised phrase text, if it is a node of the graph.
    pub fn phrase_by_text(&self, text: &str) -> Option<i64> {
        self.by_text
            .get(text)
            .copied()
            .filter(|id| self.phrase_node(*id).is_some())
    }

    /// The text of a phrase.
    pub fn phrase_text(&self, id: i64) -> Option<&str> {
        self.phrases.get(&id).map(|p| p.text.as_str())
    }

    /// Whether a phrase currently has a node (some passage mentions it).
    pub fn has_phrase(&self, id: i64) -> bool {
        self.phrase_node(id).is_some()
    }

    /// The triples of a passage.
    pub fn triples_of(&self, passage_id: i64) -> &[TripleRow] {
        self.passages
            .get(&passage_id)
            .map(|p| p.triples.as_slice())
            .unwrap_or(&[])
    }

    /// A triple by id, while its passage is in the graph.
    pub fn triple(&self, id: i64) -> Option<&TripleRow> {
        let passage = self.triple_passage.get(&id)?;
        self.triples_of(*passage).iter().find(|t| t.id == id)
    }

    /// Sizes of the graph.
    pub fn stats(&self) -> GraphStats {
        let mut s = GraphStats {
            phrases: self.phrases.values().filter(|p| p.node.is_some()).count(),
            passages: self.passages.len(),
            relation_edges: 0,
            synonym_edges: 0,
            context_edges: 0,
        };
        for e in self.graph.edge_weights() {
            s.relation_edges += usize::from(e.relation > 0.0);
            s.synonym_edges += usize::from(e.synonym > 0.0);
            s.context_edges += usize::from(e.context > 0.0);
        }
        s
    }

    /// The compact form retrieval searches, rebuilt after any change and shared until the next one.
    pub fn snapshot(&mut self) -> Arc<Snapshot> {
        if let Some(s) = &self.snapshot {
            return s.clone();
        }
        let s = Arc::new(Snapshot::build(self));
        self.snapshot = Some(s.clone());
        s
    }

    fn phrase_node(&self, id: i64) -> Option<NodeIndex> {
        self.phrases.get(&id).and_then(|p| p.node)
    }

    /// Counts a mention of `phrase` by `passage`, creating the phrase's node (with its synonym edges) if needed.
    fn attach(&mut self, phrase: i64, passage: i64) -> Option<NodeIndex> {
        let entry = self.phrases.get_mut(&phrase)?;
        *entry.passages.entry(passage).or_insert(0) += 1;
        if let Some(n) = entry.node {
            return Some(n);
        }
        let n = self.graph.add_node(Node::Phrase(phrase));
        entry.node = Some(n);
        let synonyms = self.synonyms.get(&phrase).cloned().unwrap_or_default();
        for (other, w) in synonyms {
            if let Some(m) = self.phrase_node(other) {
                self.edge_mut(n, m).synonym = w;
            }
        }
        Some(n)
    }

    /// Undoes one mention of `phrase` by `passage`, removing the node when nothing mentions it any more.
    fn detach(&mut self, phrase: i64, passage: i64) {
        let Some(entry) = self.phrases.get_mut(&phrase) else {
            return;
        };
        if let Some(c) = entry.passages.get_mut(&passage) {
            *c -= 1;
            if *c == 0 {
                entry.passages.remove(&passage);
            }
        }
        if entry.passages.is_empty() {
            if let Some(n) = entry.node.take() {
                self.graph.remove_node(n);
            }
        }
    }

    fn edge_mut(&mut self, a: NodeIndex, b: NodeIndex) -> &mut Edge {
        let e = match self.graph.find_edge(a, b) {
            Some(e) => e,
            None => self.graph.add_edge(a, b, Edge::default()),
        };
        &mut self.graph[e]
    }
}

/// An immutable, compact view of the graph for Personalized PageRank.
///
/// Node numbering: phrases first (`0..phrases.len()`), then passages. The phrase graph (HippoRAG v1) holds relation
/// and synonym edges; the full graph (HippoRAG 2) adds the passage nodes and their context edges.
#[derive(Debug)]
pub struct Snapshot {
    /// Phrase ids by node number.
    pub phrase_ids: Vec<i64>,
    /// Passage ids by node number minus the number of phrases.
    pub passage_ids: Vec<i64>,
    /// Node number of each phrase id.
    pub phrase_index: HashMap<i64, u32>,
    /// Node number (in the full graph) of each passage id.
    pub passage_index: HashMap<i64, u32>,
    /// For each phrase node, the number of passages that mention it (|P_i|; 1 / it is the node specificity).
    pub phrase_passages: Vec<u32>,
    /// For each passage, the phrase nodes its triples mention, once per mention (subject and object of each
    /// triple): HippoRAG v1 scores a passage by the PPR mass of these.
    pub passage_mentions: Vec<Vec<u32>>,
    /// Relation and synonym edges between phrases.
    pub phrase_graph: Csr,
    /// The phrase graph plus passage nodes and context edges.
    pub full_graph: Csr,
}

impl Snapshot {
    fn build(g: &KnowledgeGraph) -> Self {
        let mut phrase_ids: Vec<i64> = g
            .phrases
            .iter()
            .filter(|(_, p)| p.node.is_some())
            .map(|(id, _)| *id)
            .collect();
        phrase_ids.sort_unstable();
        let mut passage_ids: Vec<i64> = g.passages.keys().copied().collect();
        passage_ids.sort_unstable();
        let phrase_index: HashMap<i64, u32> = phrase_ids
            .iter()
            .enumerate()
            .map(|(i, id)| (*id, i as u32))
            .collect();
        let np = phrase_ids.len() as u32;
        let passage_index: HashMap<i64, u32> = passage_ids
            .iter()
            .enumerate()
            .map(|(i, id)| (*id, np + i as u32))
            .collect();
        let number = |n: &Node| match n {
            Node::Phrase(id) => phrase_index[id],
            Node::Passage(id) => passage_index[id],
        };
        let mut phrase_edges = Vec::new();
        let mut full_edges = Vec::new();
        for e in g.graph.edge_indices() {
            let Some((a, b)) = g.graph.edge_endpoints(e) else {
                continue;
            };
            let (a, b) = (number(&g.graph[a]), number(&g.graph[b]));
            let w = g.graph[e];
            let phrase_w = w.relation + w.synonym;
            if phrase_w > 0.0 {
                phrase_edges.push((a, b, phrase_w));
            }
            let full_w = phrase_w + w.context;
            if full_w > 0.0 {
                full_edges.push((a, b, full_w));
            }
        }
        let phrase_passages = phrase_ids
            .iter()
            .map(|id| g.phrases[id].passages.len() as u32)
            .collect();
        let passage_mentions = passage_ids
            .iter()
            .map(|id| {
                g.passages[id]
                    .triples
                    .iter()
                    .flat_map(|t| [t.subject_id, t.object_id])
                    .filter_map(|p| phrase_index.get(&p).copied())
                    .collect()
            })
            .collect();
        let total = phrase_ids.len() + passage_ids.len();
        Self {
            phrase_graph: Csr::from_edges(phrase_ids.len(), &phrase_edges),
            full_graph: Csr::from_edges(total, &full_edges),
            phrase_ids,
            passage_ids,
            phrase_index,
            passage_index,
            phrase_passages,
            passage_mentions,
        }
    }

    /// Approximate heap bytes of the snapshot.
    pub fn memory_bytes(&self) -> usize {
        self.phrase_graph.memory_bytes()
            + self.full_graph.memory_bytes()
            + self.phrase_ids.len() * 8
            + self.passage_ids.len() * 8
            + (self.phrase_index.len() + self.passage_index.len()) * 24
            + self.phrase_passages.len() * 4
            + self
                .passage_mentions
                .iter()
                .map(|m| m.len() * 4 + 24)
                .sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn triple(id: i64, passage: i64, s: i64, o: i64) -> TripleRow {
        TripleRow {
            id,
            passage_id: passage,
            document_id: format!("doc{passage}"),
            subject_id: s,
            relation: "rel".into(),
            object_id: o,
        }
    }

    fn graph() -> KnowledgeGraph {
        let mut g = KnowledgeGraph::default();
        for (id, text) in [(1, "alpha"), (2, "beta"), (3, "gamma"), (4, "delta")] {
            g.add_phrase(id, text.into());
        }
        g.add_passage(
            10,
            "doc10",
            vec![triple(100, 10, 1, 2), triple(101, 10, 1, 2)],
        );
        g.add_passage(11, "doc11", vec![triple(102, 11, 2, 3)]);
        g
    }

    #[test]
    fn relation_edges_count_triples_and_context_edges_link_passages() {
        let mut g = graph();
        let s = g.stats();
        assert_eq!((s.phrases, s.passages), (3, 2));
        assert_eq!((s.relation_edges, s.context_edges), (2, 4));
        let snap = g.snapshot();
        let (a, b) = (snap.phrase_index[&1], snap.phrase_index[&2]);
        let w: Vec<(u32, f32)> = snap.phrase_graph.neighbors(a).collect();
        assert_eq!(w, vec![(b, 2.0)], "two triples alpha–beta");
        assert_eq!(
            snap.phrase_passages[b as usize], 2,
            "beta is in both passages"
        );
        assert_eq!(
            snap.passage_mentions[0].len(),
            4,
            "two triples, subject and object each"
        );
        assert_eq!(snap.full_graph.nodes(), 5);
        assert_eq!(g.triple(102).unwrap().passage_id, 11);
    }

    #[test]
    fn synonyms_appear_when_both_phrases_are_nodes() {
        let mut g = graph();
        g.add_synonyms(&[(3, 4, 0.9)]);
        assert_eq!(g.stats().synonym_edges, 0, "delta has no node yet");
        g.add_passage(12, "doc12", vec![triple(103, 12, 4, 4)]);
        assert_eq!(g.stats().synonym_edges, 1);
        g.remove_document("doc12");
        assert_eq!(g.stats().synonym_edges, 0);
        assert!(!g.has_phrase(4));
    }

    #[test]
    fn removing_a_passage_undoes_its_share() {
        let mut g = graph();
        let before = g.stats();
        g.add_passage(12, "doc12", vec![triple(103, 12, 1, 2)]);
        g.remove_passage(12);
        assert_eq!(g.stats(), before);
        assert_eq!(g.remove_document("doc10"), 1);
        let s = g.stats();
        assert_eq!((s.phrases, s.passages, s.relation_edges), (2, 1, 1));
        assert!(!g.has_phrase(1) && g.phrase_by_text("alpha").is_none());
        assert!(g.triple(100).is_none());
        let snap = g.snapshot();
        assert_eq!(snap.phrase_ids, vec![2, 3]);
    }

    #[test]
    fn the_snapshot_is_cached_until_a_change() {
        let mut g = graph();
        let a = g.snapshot();
        assert!(Arc::ptr_eq(&a, &g.snapshot()));
        g.add_synonyms(&[(1, 3, 0.85)]);
        assert!(!Arc::ptr_eq(&a, &g.snapshot()));
    }
}
