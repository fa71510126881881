//! Per-request attention (`attention`: dense or HiP sparse attention) through the router with a synthetic model
//! (`synthetic:tiny`, random weights from a fixed seed): `/v1/chat/completions` and `/v1/completions` answer with
//! HiP engaged (their logits differ from dense attention's), a HiP whose `top_k` covers every key block answers
//! exactly as dense attention does, refused parameters and HiP with `kv_budget` are 400 `invalid_parameter` and
//! malformed objects 400 `invalid_field`, both naming `attention`; `/v1/qa` takes the same field for its generated
//! answer; `[engine.attention]` is the default a request overrides; the OpenAPI spec describes the field.

mod common;

use axum::http::StatusCode;
use common::{Db, TestApp};
use engram_engine::{AttentionMode, HipParams};
use serde_json::{json, Value};

/// HiP on small blocks, engaged past 8 tokens: each query block keeps 2 blocks of 4 keys besides the first 4
/// tokens and the latest 8.
fn sparse() -> Value {
    json!({"kind": "hip", "top_k": 2, "min_context": 8, "block_q": 4, "block_k": 4, "sink_tokens": 4,
           "recent_tokens": 8})
}

async fn start(tweak: impl FnOnce(&mut engram::config::Config)) -> TestApp {
    TestApp::start(Db::Sqlite, |c| {
        c.engine.model = Some("synthetic:tiny".into());
        c.engine.kv_cache_mib = 16;
        c.engine.token_budget = 64;
        tweak(c);
    })
    .await
}

/// A greedy chat request over a prompt of about 400 tokens (the synthetic tokenizer has a token per byte), with
/// log-probabilities and `extra`'s fields.
fn chat(extra: Value) -> Value {
    let long = "the quick brown fox jumps over the lazy dog ".repeat(9);
    let mut body = json!({"messages": [{"role": "user", "content": long}], "max_tokens": 8, "temperature": 0,
                          "logprobs": true});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

/// The generated token ids and their log-probabilities.
fn tokens(answer: &Value) -> Vec<(u64, f64)> {
    answer["choices"][0]["logprobs"]["content"]
        .as_array()
        .unwrap_or_else(|| panic!("no logprobs: {answer}"))
        .iter()
        .map(|t| {
            (
                t["token_id"].as_u64().unwrap(),
                t["logprob"].as_f64().unwrap(),
            )
        })
        .collect()
}

/// The same tokens with the same log-probabilities (to float noise).
fn assert_same(a: &[(u64, f64)], b: &[(u64, f64)], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}");
    for ((at, al), (bt, bl)) in a.iter().zip(b) {
        assert_eq!(at, bt, "{what}");
        assert!((al - bl).abs() < 1e-5, "{al} vs {bl}: {what}");
    }
}

async fn post_ok(t: &TestApp, uri: &str, body: &Value) -> Value {
    let (s, answer) = t.post_json(uri, body).await;
    assert_eq!(s, StatusCode::OK, "{body} -> {answer}");
    answer
}

async fn assert_refused(t: &TestApp, uri: &str, body: &Value, code: &str) -> Value {
    let (s, e) = t.post_json(uri, body).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{body} -> {e}");
    assert_eq!(e["error"]["code"], code, "{body} -> {e}");
    assert_eq!(e["error"]["param"], "attention", "{body} -> {e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{e}"
    );
    e
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hip_answers_long_prompts_and_changes_their_logits() {
    let t = start(|_| {}).await;
    let dense = post_ok(&t, "/v1/chat/completions", &chat(json!({}))).await;
    let hip = post_ok(
        &t,
        "/v1/chat/completions",
        &chat(json!({"attention": sparse()})),
    )
    .await;
    assert_eq!(hip["object"], "chat.completion");
    assert!(hip["choices"][0]["message"]["content"].is_string(), "{hip}");
    let n = hip["usage"]["completion_tokens"].as_u64().unwrap();
    assert!((1..=8).contains(&n), "{hip}");
    assert!(
        hip["usage"]["prompt_tokens"].as_u64().unwrap() > 300,
        "{hip}"
    );
    // The first token's distribution comes from a prompt whose rows saw about 20 of its 400 keys.
    let (d, h) = (tokens(&dense), tokens(&hip));
    assert!(
        (d[0].1 - h[0].1).abs() > 1e-4,
        "HiP did not change the logits: {hip}"
    );
    // Dense, explicitly or by null, is the default answer.
    for attention in [json!({"kind": "dense"}), Value::Null] {
        let again = post_ok(
            &t,
            "/v1/chat/completions",
            &chat(json!({ "attention": attention })),
        )
        .await;
        assert_same(&tokens(&again), &d, &attention.to_string());
    }
    // Text completions share the field.
    let long = "the quick brown fox jumps over the lazy dog ".repeat(9);
    let completion =
        json!({"prompt": long, "max_tokens": 4, "temperature": 0, "attention": sparse()});
    let c = post_ok(&t, "/v1/completions", &completion).await;
    assert!(c["choices"][0]["text"].is_string(), "{c}");
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hip_covering_every_block_answers_as_dense_attention_does() {
    let t = start(|_| {}).await;
    let dense = post_ok(&t, "/v1/chat/completions", &chat(json!({"max_tokens": 16}))).await;
    // Small blocks (about 100 candidate blocks, all within top_k) and the default ones: every row attends to
    // every earlier key, in order, so the greedy answer and its log-probabilities are dense attention's.
    for attention in [
        json!({"kind": "hip", "top_k": 256, "min_context": 0, "block_q": 4, "block_k": 4, "sink_tokens": 4,
               "recent_tokens": 8}),
        json!({"kind": "hip", "top_k": 256, "min_context": 0}),
    ] {
        let hip = post_ok(
            &t,
            "/v1/chat/completions",
            &chat(json!({"max_tokens": 16, "attention": attention})),
        )
        .await;
        assert_eq!(
            hip["choices"][0]["message"], dense["choices"][0]["message"],
            "{attention}"
        );
        assert_same(&tokens(&dense), &tokens(&hip), &attention.to_string());
    }
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_attention_is_a_400_naming_it() {
    let t = start(|_| {}).await;
    // Parameters the engine refuses.
    for attention in [
        json!({"kind": "hip", "top_k": 0}),
        json!({"kind": "hip", "top_k": 257}),
        json!({"kind": "hip", "block_q": 0}),
        json!({"kind": "hip", "block_k": 0}),
    ] {
        let body = chat(json!({ "attention": attention }));
        let e = assert_refused(&t, "/v1/chat/completions", &body, "invalid_parameter").await;
        let message = e["error"]["message"].as_str().unwrap();
        assert!(message.contains("between"), "{e}");
        let completion = json!({"prompt": "Once upon a time", "attention": attention});
        assert_refused(&t, "/v1/completions", &completion, "invalid_parameter").await;
    }
    // HiP with an H2O budget.
    let both = chat(
        json!({"attention": sparse(), "kv_budget": {"heavy_tokens": 64, "recent_tokens": 64}}),
    );
    let e = assert_refused(&t, "/v1/chat/completions", &both, "invalid_parameter").await;
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("kv_budget"),
        "{e}"
    );
    // Dense attention with a budget is fine.
    let dense_budget = chat(
        json!({"attention": {"kind": "dense"}, "kv_budget": {"heavy_tokens": 64, "recent_tokens": 64}}),
    );
    post_ok(&t, "/v1/chat/completions", &dense_budget).await;
    // Malformed objects: an unknown kind or field, a wrong type, no kind.
    for attention in [
        json!({"kind": "sparse"}),
        json!({"kind": "hip", "topk": 8}),
        json!({"kind": "hip", "top_k": "8"}),
        json!({"kind": "hip", "top_k": -1}),
        json!({"top_k": 8}),
        json!("hip"),
        json!(true),
    ] {
        let body = chat(json!({ "attention": attention }));
        let e = assert_refused(&t, "/v1/chat/completions", &body, "invalid_field").await;
        let completion = json!({"prompt": "Once upon a time", "attention": attention});
        assert_refused(&t, "/v1/completions", &completion, "invalid_field").await;
        // A streamed request is refused before its stream starts.
        let mut streamed = body.clone();
        streamed["stream"] = json!(true);
        assert_refused(&t, "/v1/chat/completions", &streamed, "invalid_field").await;
        assert_eq!(e["error"]["type"], "invalid_request_error");
    }
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_configured_attention_is_the_default_a_request_overrides() {
    let t = start(|c| {
        c.engine.attention = AttentionMode::Hip(HipParams {
            block_q: 4,
            block_k: 4,
            top_k: 2,
            sink_tokens: 4,
            recent_tokens: 8,
            min_context: 8,
        });
    })
    .await;
    let default = post_ok(&t, "/v1/chat/completions", &chat(json!({}))).await;
    let explicit = post_ok(
        &t,
        "/v1/chat/completions",
        &chat(json!({"attention": sparse()})),
    )
    .await;
    assert_same(
        &tokens(&default),
        &tokens(&explicit),
        "the default is the configured HiP",
    );
    let dense = post_ok(
        &t,
        "/v1/chat/completions",
        &chat(json!({"attention": {"kind": "dense"}})),
    )
    .await;
    assert!(
        (tokens(&default)[0].1 - tokens(&dense)[0].1).abs() > 1e-4,
        "{default}"
    );
    // The server's default yields to a request's H2O budget (only a request's own HiP is refused with one).
    let budget = chat(json!({"kv_budget": {"heavy_tokens": 64, "recent_tokens": 64}}));
    post_ok(&t, "/v1/chat/completions", &budget).await;
    t.finish().await;
}

fn demo_corpus() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/corpora/demo/corpus.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

const QUESTION: &str = "Which company did Ida Fernsworth found?";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qa_generates_its_answer_with_the_requests_attention() {
    let t = start(|c| c.engine.token_budget = 256).await;
    t.ingest(&demo_corpus()).await;
    let ask = |attention: Value| json!({"question": QUESTION, "top_k": 3, "attention": attention});
    let dense = post_ok(&t, "/v1/qa", &json!({"question": QUESTION, "top_k": 3})).await;
    assert_eq!(dense["answer"]["mode"], "generated", "{dense}");
    let null = post_ok(&t, "/v1/qa", &ask(Value::Null)).await;
    assert_eq!(null["answer"], dense["answer"]);
    let hip = post_ok(&t, "/v1/qa", &ask(sparse())).await;
    assert_eq!(hip["answer"]["mode"], "generated", "{hip}");
    assert!(hip["answer"]["tokens"].as_u64().unwrap() >= 1, "{hip}");
    // Attribution scores the answer densely: its values are over the answer HiP wrote.
    assert_eq!(hip["attribution"]["value"], "answer_log_prob", "{hip}");
    // A HiP that keeps every block answers as dense attention does, and the attribution is the same.
    let covering =
        json!({"kind": "hip", "top_k": 256, "min_context": 0, "block_q": 4, "block_k": 4});
    let same = post_ok(&t, "/v1/qa", &ask(covering)).await;
    assert_eq!(same["answer"], dense["answer"]);
    assert_eq!(same["attribution"]["full"], dense["attribution"]["full"]);
    // Reasoning steps are generated with it too.
    let mut rounds = ask(sparse());
    rounds["iterations"] = json!(2);
    rounds["attribution"] = json!("none");
    let it = post_ok(&t, "/v1/qa", &rounds).await;
    assert!(!it["rounds"].as_array().unwrap().is_empty(), "{it}");
    // Refused and malformed ones are 400s naming `attention`, also when streamed (before the stream starts).
    for (attention, code) in [
        (json!({"kind": "hip", "top_k": 0}), "invalid_parameter"),
        (json!({"kind": "hip", "block_k": 0}), "invalid_parameter"),
        (json!({"kind": "sparse"}), "invalid_field"),
        (json!({"kind": "hip", "topk": 8}), "invalid_field"),
        (json!({"kind": "hip", "top_k": "8"}), "invalid_field"),
        (json!("hip"), "invalid_field"),
    ] {
        let mut body = ask(attention);
        assert_refused(&t, "/v1/qa", &body, code).await;
        body["stream"] = json!(true);
        assert_refused(&t, "/v1/qa", &body, code).await;
    }
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extractive_qa_ignores_attention_but_checks_it() {
    let t = TestApp::start(Db::Sqlite, |_| {}).await;
    t.ingest(&demo_corpus()).await;
    let plain = post_ok(&t, "/v1/qa", &json!({"question": QUESTION, "top_k": 3})).await;
    let hip = post_ok(
        &t,
        "/v1/qa",
        &json!({"question": QUESTION, "top_k": 3, "attention": sparse()}),
    )
    .await;
    assert_eq!(hip["answer"]["mode"], "extractive", "{hip}");
    assert_eq!(hip["answer"], plain["answer"]);
    let bad = json!({"question": QUESTION, "attention": {"kind": "hip", "top_k": 0}});
    assert_refused(&t, "/v1/qa", &bad, "invalid_parameter").await;
    t.finish().await;
}

#[tokio::test]
async fn the_spec_describes_attention() {
    let t = TestApp::start(Db::Sqlite, |_| {}).await;
    let (s, spec) = t.get("/openapi.json").await;
    assert_eq!(s, StatusCode::OK);
    for schema in ["SamplingFields", "QaRequest"] {
        let attention = &spec["components"]["schemas"][schema]["properties"]["attention"];
        let kinds = attention["oneOf"]
            .as_array()
            .unwrap_or_else(|| panic!("{schema}: {attention}"));
        assert_eq!(kinds.len(), 3, "{attention}");
        assert_eq!(kinds[0]["properties"]["kind"]["enum"], json!(["dense"]));
        let hip = &kinds[1]["properties"];
        assert_eq!(hip["kind"]["enum"], json!(["hip"]));
        assert_eq!(hip["top_k"]["maximum"], 256);
        assert_eq!(hip["top_k"]["default"], 32);
        assert_eq!(hip["min_context"]["default"], 4096);
        assert_eq!(kinds[1]["additionalProperties"], false);
        assert_eq!(kinds[2]["type"], "null");
    }
    t.finish().await;
}
