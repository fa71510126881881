//! Dense and hybrid retrieval and `/v1/embeddings`, with the real all-MiniLM-L6-v2 (fetched by `make setup`) and
//! the embedded qdrant-edge store.

mod common;

use axum::http::StatusCode;
use common::{Db, TestApp};
use serde_json::{json, Value};

async fn start() -> TestApp {
    TestApp::start(Db::Sqlite, |c| {
        c.embedding.enabled = true;
        c.embedding.model_dir = common::model_dir();
    })
    .await
}

async fn retrieve(t: &TestApp, query: &str, method: &str, top_k: usize) -> Vec<Value> {
    let (status, body) = t
        .post_json(
            "/v1/retrieve",
            &json!({"query": query, "top_k": top_k, "method": method}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["method"], method);
    body["passages"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dense_and_hybrid_retrieval_and_deletion() {
    let t = start().await;
    let job = t
        .ingest(&json!([
            {"title": "Feline care", "text": "Cats need fresh water, regular meals and a clean litter box."},
            {"title": "Volcanoes", "text": "Magma that reaches the surface erupts as lava."},
            {"title": "Banking", "text": "Interest rates set by central banks affect mortgages."},
        ]))
        .await;
    assert_eq!(job["counts"]["done"], 3, "{job}");
    let dense = t.app.pipeline.dense_index().expect("embeddings enabled");
    assert_eq!(dense.vectors().count().await.unwrap(), 3);

    // No word in common with the passage: only the dense ranking can find it.
    let hits = retrieve(&t, "How should I look after my kitten?", "dense", 3).await;
    assert_eq!(hits[0]["title"], "Feline care");
    assert!(hits[0]["score"].as_f64().unwrap() > hits[1]["score"].as_f64().unwrap());
    assert!(t
        .retrieve("How should I look after my kitten?", 3)
        .await
        .is_empty());

    let hits = retrieve(&t, "lava eruption", "hybrid", 2).await;
    assert_eq!(hits[0]["title"], "Volcanoes");
    assert_eq!(hits.len(), 2);

    let id = hits[0]["document_id"].as_str().unwrap().to_string();
    let (status, _) = t.delete(&format!("/v1/documents/{id}")).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(dense.vectors().count().await.unwrap(), 2);
    let hits = retrieve(&t, "lava eruption", "dense", 3).await;
    assert!(hits.iter().all(|h| h["document_id"] != id.as_str()));
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embeddings_endpoint() {
    let t = start().await;
    let (status, body) = t
        .post_json(
            "/v1/embeddings",
            &json!({"input": "The quick brown fox.", "model": "all-MiniLM-L6-v2"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["object"], "list");
    assert_eq!(body["data"][0]["object"], "embedding");
    let v: Vec<f64> = body["data"][0]["embedding"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    assert_eq!(v.len(), 384);
    let norm: f64 = v.iter().map(|x| x * x).sum::<f64>().sqrt();
    assert!((norm - 1.0).abs() < 1e-4, "{norm}");
    assert!(body["usage"]["prompt_tokens"].as_u64().unwrap() > 2);
    assert_eq!(body["usage"]["truncated"], json!([]));

    let long = "word ".repeat(1000);
    let (status, body) = t
        .post_json("/v1/embeddings", &json!({"input": ["short one", long]}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"].as_array().unwrap().len(), 2);
    assert_eq!(body["data"][1]["index"], 1);
    assert_eq!(
        body["usage"]["truncated"],
        json!([1]),
        "the over-long input is reported"
    );
    let max = body["usage"]["max_tokens"].as_u64().unwrap();
    assert_eq!(max, 256);
    assert!(body["usage"]["prompt_tokens"].as_u64().unwrap() <= max + 10);

    let bad = [
        (json!({"input": []}), "empty_input", "input"),
        (json!({"input": ["ok", 7]}), "invalid_field", "input[1]"),
        (json!({"input": ["ok", ""]}), "empty_input", "input[1]"),
        (json!({"input": {"a": 1}}), "invalid_field", "input"),
        (
            json!({"input": "x", "model": "text-embedding-3-large"}),
            "model_not_found",
            "model",
        ),
        (
            json!({"input": "x", "encoding_format": "base64"}),
            "invalid_field",
            "encoding_format",
        ),
        (json!({"inptu": "x"}), "invalid_field", ""),
    ];
    for (req, code, param) in bad {
        let (status, body) = t.post_json("/v1/embeddings", &req).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{req}: {body}");
        assert_eq!(body["error"]["code"], code, "{req}: {body}");
        if !param.is_empty() {
            assert_eq!(body["error"]["param"], param, "{req}");
        }
    }
    t.finish().await;
}

#[tokio::test]
async fn without_embeddings_dense_methods_are_unknown_and_embeddings_unavailable() {
    let t = TestApp::start(Db::Sqlite, |_| {}).await;
    let (status, body) = t
        .post_json("/v1/retrieve", &json!({"query": "x", "method": "dense"}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["code"], "unknown_method");
    let (status, body) = t.post_json("/v1/embeddings", &json!({"input": "x"})).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["error"]["code"], "embeddings_disabled");
    t.finish().await;
}

#[tokio::test]
async fn a_missing_model_stops_the_start_with_a_fix() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = engram::config::Config::default();
    config.storage.data_dir = dir.path().to_path_buf();
    config.embedding.model_dir = dir.path().join("no-model-here");
    let err = engram::app::App::open(config)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("make setup"), "{err}");
}
