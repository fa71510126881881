//! `POST /v1/qa` through the router on the demo corpus. Without a generation model: an extractive answer copied
//! from a retrieved passage, passage attributions that share out the reader's value (exact up to 10 passages,
//! sampled with standard errors beyond), the graph retriever's seeds, and clear errors. With a synthetic model:
//! a generated answer and TextGenSHAP values over its log-probability. With the graph: the relations of the
//! retrieved passages (the graph neighbourhood the UI draws).

mod common;

use axum::http::StatusCode;
use common::{Db, TestApp};
use serde_json::{json, Value};

fn demo_corpus() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/corpora/demo/corpus.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn attribution_sum(body: &Value) -> f64 {
    body["passages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["attribution"]["value"].as_f64().unwrap())
        .sum()
}

async fn qa_on_demo_corpus(db: Db) {
    let t = TestApp::start(db, |_| {}).await;
    t.ingest(&demo_corpus()).await;

    let (s, body) = t
        .post_json(
            "/v1/qa",
            &json!({"question": "Which company did Ida Fernsworth found in 1874?", "top_k": 5}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let answer = &body["answer"];
    assert_eq!(answer["mode"], "extractive", "{body}");
    let i = answer["passage"].as_u64().unwrap() as usize;
    let passage = &body["passages"][i];
    let text = passage["text"].as_str().unwrap();
    let (a, b) = (
        answer["start_byte"].as_u64().unwrap() as usize,
        answer["end_byte"].as_u64().unwrap() as usize,
    );
    assert_eq!(&text[a..b], answer["text"].as_str().unwrap());
    assert!(
        answer["text"].as_str().unwrap().contains("Fernsworth"),
        "{answer}"
    );
    // Exact Shapley values over the 5 passages share out v(all) - v(none); the answer's passage gets the most.
    let info = &body["attribution"];
    assert_eq!(info["method"], "exact_shapley");
    assert_eq!(info["evaluations"], 32);
    let full = info["full"].as_f64().unwrap() - info["empty"].as_f64().unwrap();
    assert!((attribution_sum(&body) - full).abs() < 1e-9, "{body}");
    let values: Vec<f64> = body["passages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["attribution"]["value"].as_f64().unwrap())
        .collect();
    let top = values
        .iter()
        .enumerate()
        .max_by(|x, y| x.1.total_cmp(y.1))
        .unwrap()
        .0;
    assert_eq!(top, i, "{values:?}");
    for key in ["retrieve_ms", "read_ms", "attribution_ms", "total_ms"] {
        assert!(body["timings"][key].as_f64().unwrap() >= 0.0);
    }

    // Past 10 passages the values are sampled, with standard errors, and still sum to v(all) - v(none).
    let (s, body) = t
        .post_json(
            "/v1/qa",
            &json!({"question": "Where does the River Avelle rise?", "top_k": 12, "retriever": "hipporag"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["retriever"], "hipporag");
    assert_eq!(body["attribution"]["method"], "permutation_shapley");
    assert!(body["seeds"].as_array().is_some());
    let full = body["attribution"]["full"].as_f64().unwrap();
    assert!((attribution_sum(&body) - full).abs() < 1e-9, "{body}");
    assert!(body["passages"]
        .as_array()
        .unwrap()
        .iter()
        .all(|p| p["attribution"]["std_error"].as_f64().unwrap() >= 0.0));
    assert_relations_are_the_neighbourhood(&body);

    // No attributions when asked for none.
    let (s, body) = t
        .post_json(
            "/v1/qa",
            &json!({"question": "What is Marrowick known for?", "attribution": "none"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert!(body["attribution"].is_null());
    assert!(body["passages"][0]["attribution"].is_null());
    t.finish().await;
}

/// `relations`: the graph's triples inside the retrieved passages, at most 3 per passage, those touching a seed
/// phrase first and flagged so.
fn assert_relations_are_the_neighbourhood(body: &Value) {
    let seeds: Vec<&str> = body["seeds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["phrase"].as_str().unwrap())
        .collect();
    assert!(!seeds.is_empty(), "{body}");
    let relations = body["relations"].as_array().unwrap();
    assert!(!relations.is_empty(), "{body}");
    let n = body["passages"].as_array().unwrap().len();
    let mut per_passage = vec![Vec::new(); n];
    for r in relations {
        let (s, o) = (
            r["subject"].as_str().unwrap(),
            r["object"].as_str().unwrap(),
        );
        assert!(!s.is_empty() && !o.is_empty() && !r["relation"].as_str().unwrap().is_empty());
        let seed = r["seed"].as_bool().unwrap();
        assert_eq!(seed, seeds.contains(&s) || seeds.contains(&o), "{r}");
        per_passage[r["passage"].as_u64().unwrap() as usize].push(seed);
    }
    for flags in &per_passage {
        assert!(flags.len() <= 3, "{flags:?}");
        assert!(
            flags.windows(2).all(|w| w[0] >= w[1]),
            "seeds first: {flags:?}"
        );
    }
    assert!(
        relations.iter().any(|r| r["seed"] == true),
        "some retrieved passage holds a seed phrase: {body}"
    );
    // In passage order.
    let order: Vec<u64> = relations
        .iter()
        .map(|r| r["passage"].as_u64().unwrap())
        .collect();
    assert!(order.windows(2).all(|w| w[0] <= w[1]), "{order:?}");
}

both_backends!(qa_answers_from_the_demo_corpus, qa_on_demo_corpus);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qa_relations_are_null_without_the_graph() {
    let t = TestApp::start(Db::Sqlite, |c| c.graph.enabled = false).await;
    t.ingest(&demo_corpus()).await;
    let (s, body) = t
        .post_json(
            "/v1/qa",
            &json!({"question": "Where does the River Avelle rise?"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert!(!body["passages"].as_array().unwrap().is_empty(), "{body}");
    assert!(body["relations"].is_null(), "{body}");
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qa_errors_say_what_to_fix() {
    let t = TestApp::start(Db::Sqlite, |_| {}).await;
    for (body, status, code, param) in [
        (json!({"question": "  "}), 422, "empty_question", "question"),
        (
            json!({"question": "x", "top_k": 0}),
            400,
            "invalid_field",
            "top_k",
        ),
        (
            json!({"question": "x", "retriever": "nope"}),
            400,
            "unknown_method",
            "retriever",
        ),
        (
            json!({"question": "x", "stream": true}),
            422,
            "needs_model",
            "stream",
        ),
        (
            json!({"question": "x", "attribution": "tokens"}),
            422,
            "needs_model",
            "attribution",
        ),
    ] {
        let (s, b) = t.post_json("/v1/qa", &body).await;
        assert_eq!(s.as_u16(), status, "{body} -> {b}");
        assert_eq!(b["error"]["code"], code, "{b}");
        assert_eq!(b["error"]["param"], param, "{b}");
        assert!(!b["error"]["message"].as_str().unwrap().is_empty());
    }
    let (s, b) = t
        .post_json("/v1/qa", &json!({"question": "x", "attribution": "some"}))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qa_with_a_model_attributes_the_generated_answer() {
    let t = TestApp::start(Db::Sqlite, |c| {
        c.engine.model = Some("synthetic:tiny".into());
        c.engine.kv_cache_mib = 16;
        c.engine.token_budget = 256;
    })
    .await;
    t.ingest(&demo_corpus()).await;
    let (s, body) = t
        .post_json(
            "/v1/qa",
            &json!({"question": "Which company did Ida Fernsworth found?", "top_k": 3}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["answer"]["mode"], "generated", "{body}");
    assert!(body["answer"]["passage"].is_null());
    let tokens = body["answer"]["tokens"].as_u64().unwrap();
    assert!(tokens >= 1, "{body}");
    let info = &body["attribution"];
    assert_eq!(info["value"], "answer_log_prob");
    assert_eq!(info["method"], "exact_shapley");
    assert_eq!(info["evaluations"], 8);
    // Log-probabilities are negative, and the values share out v(all) - v(none).
    let (full, empty) = (
        info["full"].as_f64().unwrap(),
        info["empty"].as_f64().unwrap(),
    );
    assert!(full < 0.0 && empty < 0.0, "{info}");
    assert!(
        (attribution_sum(&body) - (full - empty)).abs() < 1e-6 * full.abs().max(1.0),
        "{body}"
    );
    // Not built yet for the model: said plainly.
    let (s, b) = t
        .post_json("/v1/qa", &json!({"question": "x", "stream": true}))
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(b["error"]["code"], "not_available", "{b}");
    t.finish().await;
}
