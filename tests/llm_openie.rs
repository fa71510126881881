//! LLM open-IE at ingestion with a synthetic model (`synthetic:tiny`, random weights): JSON-constrained answers
//! always parse, the job names the extractor and counts the passages, extractions are cached per content and
//! model (a rebuild of the graph asks the model nothing), and `hipporag` takes the question's entities from the
//! model. On SQLite and PostgreSQL.

mod common;

use axum::http::StatusCode;
use common::{Db, TestApp};
use engram::graph::index::content_hash;
use engram::graph::ExtractorChoice;
use serde_json::json;

async fn start(db: Db) -> TestApp {
    TestApp::start(db, |c| {
        c.engine.model = Some("synthetic:tiny".into());
        c.engine.kv_cache_mib = 64;
        c.graph.extractor = ExtractorChoice::Llm;
        // Random weights fill every answer to its budget: keep it small in a debug build.
        c.graph.llm_max_tokens = 80;
    })
    .await
}

async fn llm_openie_on(db: Db) {
    let t = start(db).await;
    let graph = t.app.graph.clone().expect("the graph is on");
    let name = graph.extractor().name().to_string();
    assert_eq!(name, "llm-v1:synthetic:tiny");
    let docs = json!([
        {"title": "Marrow Bridge", "text": "The Marrow Bridge crosses the River Tavy in Kelbrook. Ada Penrose designed it in 1821."},
        {"title": "Kelbrook", "text": "Kelbrook is a market town on the River Tavy. Its mail road ran over the Marrow Bridge until 1930."},
    ]);
    let job = t.ingest(&docs).await;
    assert_eq!(job["status"], "completed", "{job}");
    assert_eq!(job["extractor"], "llm-v1:synthetic:tiny", "{job}");
    assert_eq!(job["passages_extracted"], 2, "{job}");

    // Every passage has a cached extraction under the model's name.
    let passages = t.app.store.passages_after(0, 100).await.unwrap();
    assert_eq!(passages.len(), 2);
    let hashes: Vec<String> = passages
        .iter()
        .map(|p| content_hash(&p.title, &p.text))
        .collect();
    let cached = t
        .app
        .store
        .cached_extractions(&name, &hashes)
        .await
        .unwrap();
    assert_eq!(cached.len(), 2, "{cached:?}");
    for e in cached.values() {
        assert!(e.entities.len() <= 24 && e.triples.len() <= 32);
    }
    assert!(t
        .app
        .store
        .cached_extractions("another-extractor", &hashes)
        .await
        .unwrap()
        .is_empty());

    // Rebuilding the graph re-extracts every passage: all from the cache, so the model generates nothing.
    let before = engram::metrics::TOKENS_GENERATED.get();
    let stats_before = graph.read().stats();
    let n = t.app.pipeline.reindex_all().await.unwrap();
    assert_eq!(n, 2);
    assert_eq!(
        engram::metrics::TOKENS_GENERATED.get(),
        before,
        "served by the cache"
    );
    assert_eq!(graph.read().stats(), stats_before, "the same graph");

    // hipporag asks the model for the question's entities; the answer is a normal retrieval.
    let (status, body) = t
        .post_json(
            "/v1/retrieve",
            &json!({"query": "Who designed the bridge over the River Tavy?", "top_k": 2, "method": "hipporag"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["passages"].as_array().unwrap().len(), 2, "{body}");
    assert!(
        engram::metrics::TOKENS_GENERATED.get() > before,
        "the model read the question"
    );
    t.finish().await;
}

/// One test for both databases, in turn: the token counter it reads is process-wide.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llm_extraction_is_constrained_cached_and_reported_in_the_job() {
    llm_openie_on(Db::Sqlite).await;
    llm_openie_on(Db::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_llm_extractor_needs_a_model() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = engram::config::Config::default();
    config.storage.data_dir = dir.path().to_path_buf();
    config.embedding.enabled = false;
    config.graph.extractor = ExtractorChoice::Llm;
    let Err(err) = engram::app::App::open(config).await else {
        panic!("started without a model")
    };
    assert!(
        err.to_string().contains("needs a generation model"),
        "{err}"
    );
}
