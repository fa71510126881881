//! An extractor's refinement ([`Extractor::refine`], here the LLM extractor's: triples anchored to the passage's
//! entities) shapes what the graph stores, while the extraction cache keeps the extractor's raw answer; a second
//! extraction of the same passages comes from the cache and is refined the same way.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use engram::graph::index::content_hash;
use engram::graph::{GraphConfig, GraphIndex};
use engram::openie::anchor::anchor_to_entities;
use engram::openie::{Extraction, Extractor, OpenIeError, PassageInput, Triple};
use engram::store::{NewDocument, Store};

/// Answers as a small model does: the entities, then triples whose ends wrap them in other words.
#[derive(Debug, Default)]
struct WordyModel {
    calls: AtomicUsize,
}

fn triple(s: &str, r: &str, o: &str) -> Triple {
    Triple {
        subject: s.into(),
        relation: r.into(),
        object: o.into(),
    }
}

impl Extractor for WordyModel {
    fn name(&self) -> &str {
        "wordy-model"
    }

    fn cacheable(&self) -> bool {
        true
    }

    fn extract(&self, passages: &[PassageInput<'_>]) -> Result<Vec<Extraction>, OpenIeError> {
        self.calls.fetch_add(passages.len(), Ordering::SeqCst);
        Ok(passages
            .iter()
            .map(|_| Extraction {
                entities: vec!["Marrow Bridge".into(), "Ada Penrose".into()],
                triples: vec![
                    triple(
                        "the Marrow Bridge",
                        "designed by",
                        "the engineer Ada Penrose",
                    ),
                    triple("Marrow Bridge", "is a", "stone arch bridge"),
                ],
            })
            .collect())
    }

    fn refine(&self, extraction: Extraction) -> Extraction {
        anchor_to_entities(extraction)
    }
}

/// The graph's triples of `passages`, as (subject, relation, object) phrase texts.
fn graph_triples(graph: &GraphIndex, passages: &[i64]) -> Vec<(String, String, String)> {
    let g = graph.read();
    let mut out = Vec::new();
    for &passage in passages {
        for t in g.triples_of(passage) {
            let text = |id| g.phrase_text(id).unwrap_or_default().to_string();
            out.push((text(t.subject_id), t.relation.clone(), text(t.object_id)));
        }
    }
    out
}

#[tokio::test]
async fn the_graph_stores_refined_triples_and_the_cache_the_raw_answer() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_sqlite(dir.path()).await.unwrap();
    let model = Arc::new(WordyModel::default());
    let graph = GraphIndex::open(store.clone(), model.clone(), None, GraphConfig::default())
        .await
        .unwrap();
    let doc = NewDocument {
        title: "Marrow Bridge".into(),
        text: "The Marrow Bridge, a stone arch bridge, was designed by Ada Penrose.".into(),
        metadata: serde_json::Value::Null,
        source: None,
        media_type: "text/plain".into(),
    };
    let mut tx = store.begin().await.unwrap();
    Store::insert_document(&mut tx, &doc, "doc-hash", &[(0, doc.text.len())])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let passages = store.passages_after(0, 10).await.unwrap();
    assert_eq!(passages.len(), 1);
    let ids: Vec<i64> = passages.iter().map(|p| p.id).collect();
    graph.index_passages(&passages).await.unwrap();

    let want = vec![(
        "marrow bridge".to_string(),
        "designed by".to_string(),
        "ada penrose".to_string(),
    )];
    assert_eq!(
        graph_triples(&graph, &ids),
        want,
        "anchored, the type triple left out"
    );
    let hash = content_hash(&passages[0].title, &passages[0].text);
    let cached = store
        .cached_extractions("wordy-model", std::slice::from_ref(&hash))
        .await
        .unwrap();
    assert_eq!(
        cached[&hash].triples.len(),
        2,
        "the cache keeps the raw answer"
    );

    // Extracting the same passage again is served by the cache and refined the same way.
    graph.index_passages(&passages).await.unwrap();
    assert_eq!(model.calls.load(Ordering::SeqCst), 1, "the model ran once");
    assert_eq!(graph_triples(&graph, &ids), want);
}
