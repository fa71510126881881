//! The knowledge graph through the API: extraction at ingestion (the non-LLM fallback extractor), `hipporag`
//! retrieval with its seeds, deletion, idempotent re-ingestion and loading after a restart; `hipporag2` with the
//! real embedding model.

mod common;

use axum::http::StatusCode;
use common::{Db, TestApp};
use engram::graph::GraphStats;
use serde_json::{json, Value};

fn demo_corpus() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/corpora/demo/corpus.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn stats(t: &TestApp) -> GraphStats {
    t.app.graph.as_ref().expect("graph enabled").read().stats()
}

async fn retrieve(t: &TestApp, query: &str, method: &str, top_k: usize) -> Value {
    let (status, body) = t
        .post_json(
            "/v1/retrieve",
            &json!({"query": query, "top_k": top_k, "method": method}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

async fn graph_lifecycle(db: Db) {
    let t = TestApp::start(db, |_| {}).await;
    let corpus = demo_corpus();
    let n = corpus.as_array().unwrap().len();
    let job = t.ingest(&corpus).await;
    assert_eq!(job["counts"]["done"], n, "{job}");
    let before = stats(&t);
    assert_eq!(before.passages, n, "every passage is a node: {before:?}");
    assert!(
        before.phrases > 50 && before.relation_edges > 50,
        "{before:?}"
    );
    assert!(before.context_edges >= before.phrases, "{before:?}");
    assert_eq!(before.synonym_edges, 0, "no embeddings, no synonyms");
    let (extracted, triples, _) = t.app.store.graph_counts().await.unwrap();
    assert_eq!(extracted as usize, n);
    assert!(triples > 50);

    // A two-hop question: the walk starts at the phrases named in it.
    let body = retrieve(&t, "What is the capital of Talvenne?", "hipporag", 5).await;
    let seeds = body["seeds"].as_array().unwrap();
    assert!(
        seeds.iter().any(|s| s["phrase"] == "talvenne"),
        "seeds: {seeds:?}"
    );
    let weights: f64 = seeds.iter().map(|s| s["weight"].as_f64().unwrap()).sum();
    assert!(
        (weights - 1.0).abs() < 1e-9,
        "seed weights sum to 1: {weights}"
    );
    let passages = body["passages"].as_array().unwrap();
    assert_eq!(passages.len(), 5);
    let titles: Vec<&str> = passages
        .iter()
        .map(|p| p["title"].as_str().unwrap())
        .collect();
    assert!(titles[..2].contains(&"Talvenne"), "{titles:?}");
    let scores: Vec<f64> = passages
        .iter()
        .map(|p| p["score"].as_f64().unwrap())
        .collect();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]), "{scores:?}");

    // Other methods report no seeds.
    let body = retrieve(&t, "What is the capital of Talvenne?", "bm25", 3).await;
    assert_eq!(body["seeds"], json!([]));

    // hipporag2 needs embeddings.
    let (status, body) = t
        .post_json(
            "/v1/retrieve",
            &json!({"query": "capital", "method": "hipporag2"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["code"], "unknown_method");

    // Re-ingesting changes nothing.
    let job = t.ingest(&corpus).await;
    assert_eq!(job["counts"]["duplicate"], n, "{job}");
    assert_eq!(stats(&t), before);

    // Deleting a document removes its passage node and its triples.
    let id = passages.iter().find(|p| p["title"] == "Talvenne").unwrap()["document_id"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, _) = t.delete(&format!("/v1/documents/{id}")).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let after = stats(&t);
    assert_eq!(after.passages, n - 1);
    assert!(after.relation_edges < before.relation_edges, "{after:?}");
    let (extracted, triples_after, _) = t.app.store.graph_counts().await.unwrap();
    assert_eq!(extracted as usize, n - 1);
    assert!(triples_after < triples);
    let body = retrieve(&t, "What is the capital of Talvenne?", "hipporag", 5).await;
    assert!(body["passages"]
        .as_array()
        .unwrap()
        .iter()
        .all(|p| p["document_id"] != id.as_str()));

    // After a restart the graph is loaded from the store as it was.
    let (dir, url, schema) = t.stop().await;
    let t = TestApp::start_in(db, dir, url, schema, |_| {}).await;
    assert_eq!(stats(&t), after);
    t.finish().await;
}

both_backends!(graph_lifecycle_through_the_api, graph_lifecycle);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn precomputed_extractions_feed_the_graph() {
    let dir = tempfile::tempdir().unwrap();
    let openie = dir.path().join("openie.json");
    let doc = json!({"title": "Lake Corrin", "text": "Lake Corrin feeds the River Dell. The River Dell flows into Harrow Bay."});
    std::fs::write(
        &openie,
        json!({"docs": [
            {"passage": "Lake Corrin\nLake Corrin feeds the River Dell. The River Dell flows into Harrow Bay.",
             "extracted_entities": ["Lake Corrin", "River Dell", "Harrow Bay"],
             "extracted_triples": [["Lake Corrin", "feeds", "River Dell"], ["River Dell", "flows into", "Harrow Bay"], ["bad"]]},
            "not a row"
        ]})
        .to_string(),
    )
    .unwrap();
    let t = TestApp::start(Db::Sqlite, |c| c.graph.openie_file = Some(openie.clone())).await;
    t.ingest(&json!([doc, {"title": "Other", "text": "Nothing precomputed for this Passage About Zebras."}]))
        .await;
    let s = stats(&t);
    assert_eq!(s.passages, 2);
    let body = retrieve(&t, "Where does Lake Corrin drain to?", "hipporag", 1).await;
    assert_eq!(body["passages"][0]["title"], "Lake Corrin");
    assert_eq!(body["seeds"][0]["phrase"], "lake corrin");
    {
        let g = t.app.graph.as_ref().unwrap().read();
        let corrin = g.phrase_by_text("lake corrin").expect("phrase node");
        assert!(g.phrase_by_text("harrow bay").is_some());
        assert!(g.phrase_text(corrin).is_some());
    }
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hipporag2_with_embeddings_links_facts_and_synonyms() {
    let t = TestApp::start(Db::Sqlite, |c| {
        c.embedding.enabled = true;
        c.embedding.model_dir = common::model_dir();
    })
    .await;
    t.ingest(&json!([
        {"title": "Mira Holt", "text": "Mira Holt was born in Castor Vale. Mira Holt married Oren Pike in 1990."},
        {"title": "Castor Vale", "text": "Castor Vale is a town in the Duchy of Wend. The Duchy of Wend borders Lake Sarn."},
        {"title": "Oren Pike", "text": "Oren Pike founded the Pike Foundry in Castor Vale."},
        {"title": "Unrelated", "text": "The Glass Orchard is a novel by Teodor Lume."},
    ]))
    .await;
    let graph = t.app.graph.as_ref().unwrap();
    let v = graph.vectors().expect("vectors with embeddings");
    let (_, triples, phrases) = t.app.store.graph_counts().await.unwrap();
    assert_eq!(v.facts.count().await.unwrap() as i64, triples);
    assert_eq!(v.phrases.count().await.unwrap() as i64, phrases);
    assert!(t.app.store.unlinked_phrases(10).await.unwrap().is_empty());

    let body = retrieve(&t, "In which duchy was Mira Holt born?", "hipporag2", 2).await;
    let titles: Vec<&str> = body["passages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["title"].as_str().unwrap())
        .collect();
    assert!(titles.contains(&"Mira Holt"), "{titles:?}");
    assert!(!body["seeds"].as_array().unwrap().is_empty(), "{body}");

    // Deleting a document removes its facts' vectors.
    let id = body["passages"][0]["document_id"]
        .as_str()
        .unwrap()
        .to_string();
    t.delete(&format!("/v1/documents/{id}")).await;
    let (_, triples, _) = t.app.store.graph_counts().await.unwrap();
    assert_eq!(v.facts.count().await.unwrap() as i64, triples);
    t.finish().await;
}
