//! `POST /v1/qa` through the router on the demo corpus. Without a generation model: an extractive answer copied
//! from a retrieved passage, passage attributions that share out the reader's value (exact up to 10 passages,
//! sampled with standard errors beyond), the graph retriever's seeds, and clear errors. With a synthetic model:
//! a generated answer and TextGenSHAP values over its log-probability. With the graph: the relations of the
//! retrieved passages (the graph neighbourhood the UI draws). Streamed (`stream: true`): token events, then the
//! attribution, then the same response.

mod common;

use axum::http::StatusCode;
use common::{Db, TestApp};
use serde_json::{json, Value};

fn demo_corpus() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/corpora/demo/corpus.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The element of the array `items` with the largest `value`.
fn most_valued(items: &Value) -> &Value {
    items
        .as_array()
        .unwrap()
        .iter()
        .max_by(|a, b| {
            let v = |x: &Value| x["value"].as_f64().unwrap();
            v(a).total_cmp(&v(b))
        })
        .unwrap()
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
    // Token level: runs of words of the top passage, valued by the answer's log-probability.
    let (s, tb) = t
        .post_json(
            "/v1/qa",
            &json!({"question": "Which company did Ida Fernsworth found?", "top_k": 3, "attribution": "tokens"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{tb}");
    assert_eq!(
        tb["token_attribution"]["attribution"]["value"],
        "answer_log_prob"
    );
    assert_token_attribution(&tb);
    // Streamed: one token event per generated token, then the attribution, then the same response.
    let events = stream_qa(
        &t,
        &json!({"question": "Which company did Ida Fernsworth found?", "top_k": 3, "stream": true}),
    )
    .await;
    let tokens: Vec<&Value> = events
        .iter()
        .filter(|(e, _)| e == "token")
        .map(|(_, d)| d)
        .collect();
    let done = &events.last().unwrap().1;
    assert_eq!(
        tokens.len() as u64,
        done["answer"]["tokens"].as_u64().unwrap()
    );
    let text: String = tokens.iter().map(|d| d["text"].as_str().unwrap()).collect();
    assert_eq!(text.trim(), done["answer"]["text"], "{done}");
    // Greedy decoding: the streamed answer and its values are the unstreamed ones.
    assert_eq!(done["answer"], body["answer"]);
    assert_eq!(done["attribution"]["full"], body["attribution"]["full"]);
    // Two rounds of retrieval: the model writes the reasoning step that is the second query.
    let (s, it) = t
        .post_json(
            "/v1/qa",
            &json!({"question": "Which company did Ida Fernsworth found?", "top_k": 2, "iterations": 2, "attribution": "none"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{it}");
    assert_rounds(&it, 2);
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qa_attributes_with_passages_encoded_once() {
    let t = TestApp::start(Db::Sqlite, |c| {
        c.engine.model = Some("synthetic:tiny".into());
        c.engine.kv_cache_mib = 32;
        c.engine.token_budget = 512;
    })
    .await;
    // Short passages, so that 8 of them and the answer fit the tiny model's 2,048-token window.
    let short: Vec<Value> = (0..12)
        .map(|i| {
            json!({
                "title": format!("Note {i}"),
                "text": format!("Ida Fernsworth founded company number {i} in the town of Marrowick, year {}.", 1870 + i),
            })
        })
        .collect();
    t.ingest(&Value::Array(short)).await;
    let ask = |top_k: usize, encoding: Option<&str>| {
        let mut q = json!({"question": "Which company did Ida Fernsworth found?", "top_k": top_k});
        if let Some(e) = encoding {
            q["passage_encoding"] = json!(e);
        }
        q
    };
    // `auto` encodes each passage once: 2^8 coalitions, each costing its tail only.
    let (s, body) = t.post_json("/v1/qa", &ask(8, None)).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let info = &body["attribution"];
    assert_eq!(info["passage_encoding"], "separate", "{info}");
    assert_eq!(info["method"], "exact_shapley");
    assert_eq!(info["evaluations"], 256);
    let (full, empty) = (
        info["full"].as_f64().unwrap(),
        info["empty"].as_f64().unwrap(),
    );
    assert!(full < 0.0 && empty < 0.0, "{info}");
    assert!(
        (attribution_sum(&body) - (full - empty)).abs() < 1e-6 * full.abs().max(1.0),
        "{body}"
    );
    let (computed, written) = (
        info["computed_tokens"].as_u64().unwrap(),
        info["prompt_tokens"].as_u64().unwrap(),
    );
    assert!(computed * 4 < written, "{info}");
    assert!(info["forward_passes"].as_u64().unwrap() >= 1);
    // On the CPU `auto` encodes each passage once even for 3 passages (a GPU would compute every coalition
    // prompt up to 5); either can be asked for.
    let (_, auto) = t.post_json("/v1/qa", &ask(3, None)).await;
    assert_eq!(
        auto["attribution"]["passage_encoding"], "separate",
        "{auto}"
    );
    let (_, joint) = t.post_json("/v1/qa", &ask(3, Some("joint"))).await;
    assert_eq!(joint["attribution"]["passage_encoding"], "joint", "{joint}");
    let (s, sep) = t.post_json("/v1/qa", &ask(3, Some("separate"))).await;
    assert_eq!(s, StatusCode::OK, "{sep}");
    assert_eq!(sep["attribution"]["passage_encoding"], "separate");
    assert_eq!(
        sep["answer"], joint["answer"],
        "the answer is generated the same way"
    );
    assert_ne!(sep["attribution"]["empty"], joint["attribution"]["empty"]);
    // The estimator and the value function can be chosen: Banzhaf values of the answer-change indicator.
    let mut q = ask(6, Some("separate"));
    q["estimator"] = json!("banzhaf");
    q["value"] = json!("answer_kept");
    let (s, bz) = t.post_json("/v1/qa", &q).await;
    assert_eq!(s, StatusCode::OK, "{bz}");
    let info = &bz["attribution"];
    assert_eq!(info["method"], "banzhaf", "{info}");
    assert_eq!(info["value"], "answer_kept");
    assert_eq!(
        info["full"], 1.0,
        "the full prompt keeps its own answer: {info}"
    );
    assert!(info["evaluations"].as_u64().unwrap() <= 64);
    let mut q = ask(3, None);
    q["estimator"] = json!("permutation");
    let (_, perm) = t.post_json("/v1/qa", &q).await;
    assert_eq!(
        perm["attribution"]["method"], "permutation_shapley",
        "{perm}"
    );
    // ContextCite: at most its 32 random ablations plus the empty and full prompts, no standard errors.
    let mut q = ask(6, Some("separate"));
    q["estimator"] = json!("contextcite");
    let (s, cc) = t.post_json("/v1/qa", &q).await;
    assert_eq!(s, StatusCode::OK, "{cc}");
    assert_eq!(cc["attribution"]["method"], "contextcite", "{cc}");
    assert!(cc["attribution"]["evaluations"].as_u64().unwrap() <= 34);
    assert_eq!(cc["passages"].as_array().unwrap().len(), 6, "{cc}");
    assert!(
        cc["passages"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["attribution"]["std_error"] == 0.0),
        "{cc}"
    );
    // Sentences as the players, in both encodings: each passage's value is the sum of its sentences'.
    for encoding in ["separate", "joint"] {
        let mut q = ask(3, Some(encoding));
        q["attribution"] = json!("sentences");
        let (s, body) = t.post_json("/v1/qa", &q).await;
        assert_eq!(s, StatusCode::OK, "{body}");
        check_sentence_values(&body);
        assert_eq!(
            body["sentence_attribution"]["attribution"]["passage_encoding"], encoding,
            "{body}"
        );
    }
    // Passages that cannot fit the model's window: a 400 that says to lower top_k.
    t.ingest(&demo_corpus()).await;
    let (s, err) = t
        .post_json(
            "/v1/qa",
            &json!({"question": "What is Marrowick known for?", "top_k": 12}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{err}");
    assert_eq!(err["error"]["code"], "context_length_exceeded", "{err}");
    assert_eq!(err["error"]["param"], "top_k", "{err}");
    let (s, err) = t.post_json("/v1/qa", &ask(3, Some("fused"))).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{err}");
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("passage_encoding"),
        "{err}"
    );
    t.finish().await;
}

/// The response's rounds: the question first, then reasoning steps; each passage found once, by one round.
fn assert_rounds(body: &Value, most: usize) {
    let rounds = body["rounds"].as_array().unwrap();
    assert!((1..=most).contains(&rounds.len()), "{body}");
    assert_eq!(rounds[0]["query"], body["question"]);
    for r in &rounds[1..] {
        assert!(!r["query"].as_str().unwrap().trim().is_empty(), "{body}");
    }
    let added: u64 = rounds.iter().map(|r| r["added"].as_u64().unwrap()).sum();
    let passages = body["passages"].as_array().unwrap();
    assert_eq!(added as usize, passages.len(), "{body}");
    let mut ids: Vec<i64> = passages.iter().map(|p| p["id"].as_i64().unwrap()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), passages.len(), "no passage twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qa_iterates_retrieval_with_reasoning_steps() {
    let t = TestApp::start(Db::Sqlite, |_| {}).await;
    t.ingest(&demo_corpus()).await;
    let question = "In which town did the company founded by Ida Fernsworth have its workshops?";
    let (s, one) = t
        .post_json("/v1/qa", &json!({"question": question, "top_k": 2}))
        .await;
    assert_eq!(s, StatusCode::OK, "{one}");
    assert_rounds(&one, 1);
    let (s, body) = t
        .post_json(
            "/v1/qa",
            &json!({"question": question, "top_k": 2, "iterations": 3}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_rounds(&body, 3);
    let rounds = body["rounds"].as_array().unwrap();
    assert!(
        rounds.len() >= 2,
        "the reader had a sentence to go on: {body}"
    );
    // The reader's step is a sentence of a passage found by an earlier round.
    let step = rounds[1]["query"].as_str().unwrap();
    let texts: Vec<&str> = body["passages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["text"].as_str().unwrap())
        .collect();
    assert!(texts.iter().any(|t| t.contains(step)), "{step:?}");
    // The first round's passages come first, in the same order as a single round.
    let first: Vec<&Value> = one["passages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| &p["id"])
        .collect();
    let again: Vec<&Value> = body["passages"].as_array().unwrap()[..first.len()]
        .iter()
        .map(|p| &p["id"])
        .collect();
    assert_eq!(first, again);
    // Out of range.
    for bad in [0, 5] {
        let (s, e) = t
            .post_json("/v1/qa", &json!({"question": question, "iterations": bad}))
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{e}");
        assert_eq!(e["error"]["code"], "invalid_iterations");
        assert_eq!(e["error"]["param"], "iterations");
    }
    t.finish().await;
}

/// `POST /v1/qa` with `stream: true`: the (event, data) pairs, checked to end with `attribution` then `done`.
async fn stream_qa(t: &TestApp, body: &Value) -> Vec<(String, Value)> {
    let (s, headers, raw) = t
        .send(
            axum::http::Request::post("/v1/qa")
                .header("content-type", "application/json")
                .body(axum::body::Body::from(body.to_string()))
                .unwrap(),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{raw}");
    assert!(headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let raw = raw.as_str().expect("an event stream, not JSON").to_string();
    let events: Vec<(String, Value)> = raw
        .split("\n\n")
        .filter(|block| block.contains("data:"))
        .map(|block| {
            let field = |name: &str| {
                block
                    .lines()
                    .find_map(|l| l.strip_prefix(name))
                    .map(|v| v.trim().to_string())
                    .unwrap_or_default()
            };
            (
                field("event:"),
                serde_json::from_str(&field("data:")).unwrap(),
            )
        })
        .collect();
    let names: Vec<&str> = events.iter().map(|(e, _)| e.as_str()).collect();
    assert!(
        names.ends_with(&["attribution", "done"]),
        "events {names:?}"
    );
    assert!(names[..names.len() - 2].iter().all(|&e| e == "token"));
    let (attribution, done) = (&events[events.len() - 2].1, &events[events.len() - 1].1);
    assert_eq!(attribution["attribution"], done["attribution"]);
    for (i, p) in done["passages"].as_array().unwrap().iter().enumerate() {
        assert_eq!(attribution["passages"][i], p["attribution"]);
    }
    events
}

/// Checks `token_attribution`: runs of words of the passage with the largest value, in order, whose exact values
/// share out the run game's v(all) - v(none).
fn assert_token_attribution(body: &Value) {
    let ta = &body["token_attribution"];
    let p = ta["passage"].as_u64().unwrap() as usize;
    let values: Vec<f64> = body["passages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["attribution"]["value"].as_f64().unwrap())
        .collect();
    let top = values.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    assert_eq!(values[p], top, "{body}");
    assert_eq!(values.iter().position(|&v| v == top), Some(p));
    let text = body["passages"][p]["text"].as_str().unwrap();
    let spans = ta["spans"].as_array().unwrap();
    assert!(!spans.is_empty() && spans.len() <= 8, "{ta}");
    let mut end = 0;
    let mut sum = 0.0;
    for s in spans {
        let (a, b) = (
            s["start_byte"].as_u64().unwrap() as usize,
            s["end_byte"].as_u64().unwrap() as usize,
        );
        assert!(end <= a && a < b && b <= text.len(), "{ta}");
        assert!(!text[a..b].trim().is_empty());
        end = b;
        sum += s["value"].as_f64().unwrap();
        assert_eq!(s["std_error"], 0.0);
    }
    let info = &ta["attribution"];
    assert_eq!(info["method"], "exact_shapley");
    assert_eq!(info["evaluations"], 1u64 << spans.len());
    let full = info["full"].as_f64().unwrap() - info["empty"].as_f64().unwrap();
    assert!((sum - full).abs() < 1e-6 * full.abs().max(1.0), "{ta}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qa_attributes_the_words_of_the_top_passage() {
    let t = TestApp::start(Db::Sqlite, |_| {}).await;
    t.ingest(&demo_corpus()).await;
    let (s, body) = t
        .post_json(
            "/v1/qa",
            &json!({"question": "Which company did Ida Fernsworth found in 1874?", "top_k": 5, "attribution": "tokens"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_token_attribution(&body);
    // The reader's answer sentence is in the top passage, and its run with the name carries the most value.
    let ta = &body["token_attribution"];
    let p = ta["passage"].as_u64().unwrap() as usize;
    assert_eq!(body["answer"]["passage"], p as u64, "{body}");
    let text = body["passages"][p]["text"].as_str().unwrap();
    let best = most_valued(&ta["spans"]);
    let run = &text[best["start_byte"].as_u64().unwrap() as usize
        ..best["end_byte"].as_u64().unwrap() as usize];
    assert!(best["value"].as_f64().unwrap() > 0.0, "{ta}");
    // Without "tokens" there is none.
    let (_, plain) = t
        .post_json(
            "/v1/qa",
            &json!({"question": "Which company did Ida Fernsworth found in 1874?"}),
        )
        .await;
    assert!(plain["token_attribution"].is_null());
    eprintln!("most valuable run: {run:?}");
    t.finish().await;
}

/// `sentence_attribution`: sentences inside their passages, in text order, and each passage's value the sum of its
/// sentences'.
fn check_sentence_values(body: &Value) {
    let sa = &body["sentence_attribution"];
    let sentences = sa["sentences"].as_array().expect("sentence_attribution");
    let passages = body["passages"].as_array().unwrap();
    assert!(sentences.len() >= passages.len(), "{sa}");
    let mut sums = vec![0.0; passages.len()];
    let mut last_end = vec![0u64; passages.len()];
    for s in sentences {
        let p = s["passage"].as_u64().unwrap() as usize;
        let (a, b) = (
            s["start_byte"].as_u64().unwrap(),
            s["end_byte"].as_u64().unwrap(),
        );
        let text = passages[p]["text"].as_str().unwrap();
        assert!(a >= last_end[p] && a < b && b as usize <= text.len(), "{s}");
        last_end[p] = b;
        sums[p] += s["value"].as_f64().unwrap();
    }
    for (p, sum) in passages.iter().zip(sums) {
        let v = p["attribution"]["value"].as_f64().unwrap();
        assert!((v - sum).abs() < 1e-9, "{v} vs {sum}");
    }
    assert_eq!(body["attribution"]["method"], sa["attribution"]["method"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qa_attributes_sentences() {
    let t = TestApp::start(Db::Sqlite, |_| {}).await;
    t.ingest(&demo_corpus()).await;
    let ask = json!({"question": "Which company did Ida Fernsworth found in 1874?", "top_k": 5, "attribution": "sentences"});
    let (s, body) = t.post_json("/v1/qa", &ask).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    check_sentence_values(&body);
    let count = body["sentence_attribution"]["sentences"]
        .as_array()
        .unwrap()
        .len();
    assert!(
        count > 10,
        "the demo passages have several sentences each: {count}"
    );
    // Past 10 sentences `auto` fits ContextCite; the reader's answer sentence carries the most value.
    assert_eq!(body["attribution"]["method"], "contextcite", "{body}");
    let best = most_valued(&body["sentence_attribution"]["sentences"]).clone();
    let p = best["passage"].as_u64().unwrap() as usize;
    let text = body["passages"][p]["text"].as_str().unwrap();
    let sentence = &text[best["start_byte"].as_u64().unwrap() as usize
        ..best["end_byte"].as_u64().unwrap() as usize];
    assert!(
        sentence.contains(body["answer"]["text"].as_str().unwrap())
            || body["answer"]["text"].as_str().unwrap().contains(sentence),
        "{sentence:?} vs {}",
        body["answer"]
    );
    // Exact Shapley values on request are efficient: they sum to v(all) - v(none).
    let mut exact = ask.clone();
    exact["top_k"] = json!(2);
    let (s, body) = t.post_json("/v1/qa", &exact).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let info = &body["attribution"];
    if body["sentence_attribution"]["sentences"]
        .as_array()
        .unwrap()
        .len()
        <= 10
    {
        assert_eq!(info["method"], "exact_shapley", "{info}");
        let full_minus_empty = info["full"].as_f64().unwrap() - info["empty"].as_f64().unwrap();
        assert!(
            (attribution_sum(&body) - full_minus_empty).abs() < 1e-9,
            "{body}"
        );
    }
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qa_streams_an_extractive_answer() {
    let t = TestApp::start(Db::Sqlite, |_| {}).await;
    t.ingest(&demo_corpus()).await;
    let question =
        json!({"question": "Which company did Ida Fernsworth found in 1874?", "top_k": 5});
    let (s, plain) = t.post_json("/v1/qa", &question).await;
    assert_eq!(s, StatusCode::OK, "{plain}");
    let mut streamed = question.clone();
    streamed["stream"] = json!(true);
    let events = stream_qa(&t, &streamed).await;
    // The extractive span in one token event.
    assert_eq!(events.len(), 3, "{events:?}");
    assert_eq!(events[0].1["text"], plain["answer"]["text"]);
    let done = &events[2].1;
    assert_eq!(done["answer"], plain["answer"]);
    assert_eq!(done["passages"], plain["passages"]);
    // Bad requests are still plain JSON errors, before any stream.
    let (s, b) = t
        .post_json("/v1/qa", &json!({"question": " ", "stream": true}))
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(b["error"]["code"], "empty_question", "{b}");
    t.finish().await;
}
