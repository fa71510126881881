//! The OpenAI-compatible generation endpoints with a synthetic model (`synthetic:tiny`, random weights from a fixed
//! seed): answers, streaming, concurrency, cancellation and bad input.

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::{Db, TestApp};
use serde_json::{json, Value};

async fn start() -> TestApp {
    TestApp::start(Db::Sqlite, |c| {
        c.engine.model = Some("synthetic:tiny".into());
        c.engine.kv_cache_mib = 16;
        c.engine.token_budget = 64;
    })
    .await
}

fn chat(content: &str, extra: Value) -> Value {
    let mut body = json!({"messages": [{"role": "user", "content": content}], "max_tokens": 8, "temperature": 0});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_and_completions_answer_and_count_tokens() {
    let t = start().await;
    let (status, models) = t.get("/v1/models").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(models["data"][0]["id"], "synthetic:tiny", "{models}");

    let (status, a) = t
        .post_json("/v1/chat/completions", &chat("Hello there", json!({})))
        .await;
    assert_eq!(status, StatusCode::OK, "{a}");
    assert_eq!(a["object"], "chat.completion");
    assert_eq!(a["choices"][0]["message"]["role"], "assistant");
    let usage = &a["usage"];
    assert!(usage["prompt_tokens"].as_u64().unwrap() > 2);
    let n = usage["completion_tokens"].as_u64().unwrap();
    assert!((1..=8).contains(&n), "{a}");
    assert_eq!(
        usage["total_tokens"].as_u64().unwrap(),
        usage["prompt_tokens"].as_u64().unwrap() + n
    );
    if n == 8 {
        assert_eq!(a["choices"][0]["finish_reason"], "length");
    }
    // Greedy is deterministic.
    let (_, b) = t
        .post_json("/v1/chat/completions", &chat("Hello there", json!({})))
        .await;
    assert_eq!(a["choices"][0]["message"], b["choices"][0]["message"]);
    // Without logprobs the greedy token is picked on the backend (only ids leave it); with them the host samples
    // from the full logits. The answer is the same.
    let (_, c) = t
        .post_json(
            "/v1/chat/completions",
            &chat("Hello there", json!({"logprobs": true})),
        )
        .await;
    assert_eq!(
        a["choices"][0]["message"], c["choices"][0]["message"],
        "{c}"
    );
    assert_eq!(a["usage"], c["usage"], "{c}");

    let (status, c) = t
        .post_json(
            "/v1/completions",
            &json!({"prompt": "Once upon a time", "max_tokens": 5, "temperature": 0.8, "seed": 7, "logprobs": 2}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{c}");
    assert_eq!(c["object"], "text_completion");
    let lp = c["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert_eq!(
        lp.len() as u64,
        c["usage"]["completion_tokens"].as_u64().unwrap()
    );
    assert!(lp.iter().all(|t| t["logprob"].as_f64().unwrap() <= 0.0
        && t["top_logprobs"].as_array().unwrap().len() == 2));
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_sends_chunks_then_done() {
    let t = start().await;
    let (status, headers, body) = t
        .send(
            Request::post("/v1/chat/completions")
                .header("content-type", "application/json")
                .body(Body::from(
                    chat("Stream me", json!({"stream": true})).to_string(),
                ))
                .unwrap(),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let text = body.as_str().unwrap();
    let data: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    assert_eq!(*data.last().unwrap(), "[DONE]", "{text}");
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert!(chunks
        .iter()
        .all(|c| c["object"] == "chat.completion.chunk"));
    let last = chunks.last().unwrap();
    assert!(last["choices"][0]["finish_reason"].is_string(), "{last}");
    assert!(last["usage"]["completion_tokens"].as_u64().unwrap() >= 1);
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_requests_all_finish_with_their_own_answers() {
    let t = start().await;
    let prompts: Vec<String> = (0..12)
        .map(|i| format!("Request number {i} {}", "x".repeat(i * 7)))
        .collect();
    // Each answer alone first (greedy), then all at once: continuous batching must not mix them up.
    let mut alone = Vec::new();
    for p in &prompts {
        let (s, a) = t
            .post_json("/v1/chat/completions", &chat(p, json!({})))
            .await;
        assert_eq!(s, StatusCode::OK, "{a}");
        alone.push(a["choices"][0]["message"]["content"].clone());
    }
    let futures = prompts.iter().map(|p| {
        let body = chat(p, json!({}));
        let t = &t;
        async move { t.post_json("/v1/chat/completions", &body).await }
    });
    let together = futures::future::join_all(futures).await;
    for (i, (s, a)) in together.into_iter().enumerate() {
        assert_eq!(s, StatusCode::OK, "{a}");
        assert_eq!(
            a["choices"][0]["message"]["content"], alone[i],
            "request {i}"
        );
    }
    // The engine publishes its load after each step, just after the last answers went out.
    let g = t.app.generator.as_ref().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while g.stats().running != 0 {
        assert!(std::time::Instant::now() < deadline, "{:?}", g.stats());
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert_eq!(g.stats().kv_blocks_used, 0);
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_a_clear_400() {
    let t = start().await;
    let cases = [
        (
            chat("hi", json!({"temperature": 3.0})),
            "invalid_parameter",
            Some("temperature"),
        ),
        (
            chat("hi", json!({"top_p": 0.0})),
            "invalid_parameter",
            Some("top_p"),
        ),
        (
            chat("hi", json!({"max_tokens": 0})),
            "invalid_parameter",
            Some("max_tokens"),
        ),
        (
            chat("hi", json!({"model": "gpt-4"})),
            "model_not_found",
            Some("model"),
        ),
        (chat("hi", json!({"n": 2})), "invalid_parameter", Some("n")),
        (
            chat("hi", json!({"stop": 5})),
            "invalid_parameter",
            Some("stop"),
        ),
        (
            chat(&"word ".repeat(1000), json!({"max_tokens": 10})),
            "context_length_exceeded",
            Some("messages"),
        ),
        (
            json!({"messages": []}),
            "invalid_parameter",
            Some("messages"),
        ),
    ];
    for (body, code, param) in cases {
        let (status, e) = t.post_json("/v1/chat/completions", &body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body} -> {e}");
        assert_eq!(e["error"]["code"], code, "{body} -> {e}");
        if let Some(p) = param {
            assert_eq!(e["error"]["param"], p, "{body} -> {e}");
        }
    }
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_model_generation_is_unavailable() {
    let t = TestApp::start(Db::Sqlite, |_| {}).await;
    let (status, e) = t
        .post_json("/v1/chat/completions", &chat("hi", json!({})))
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{e}");
    assert_eq!(e["error"]["code"], "no_model");
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_stream_cancels_the_request_and_frees_its_cache() {
    use engram_engine::SamplingParams;
    use engram_engine::{GenerationEvent, GenerationRequest};
    let t = start().await;
    let g = t.app.generator.as_ref().unwrap().clone();
    let params = SamplingParams {
        temperature: 0.0,
        max_tokens: 1000,
        ..SamplingParams::default()
    };
    let prompt = g.tokenizer().encode("Tell me a long story", true).unwrap();
    let mut rx = g.submit(GenerationRequest::new(prompt, params)).unwrap();
    match rx.recv().await {
        Some(GenerationEvent::Token(_)) => {}
        other => panic!("expected a token, got {other:?}"),
    }
    drop(rx);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let s = g.stats();
        if s.running == 0 && s.kv_blocks_used == 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "still running: {s:?}");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn constrained_requests_always_give_json_of_the_shape() {
    use engram_engine::SamplingParams;
    use engram_engine::{EngineError, FinishReason, GenerationEvent, GenerationRequest};
    use engram_engine::{JsonConstraint, JsonShape};
    use std::sync::Arc;
    let t = start().await;
    let g = t.app.generator.as_ref().unwrap().clone();
    let shape = JsonShape::Object(vec![(
        "pairs".into(),
        JsonShape::Array {
            item: Box::new(JsonShape::Array {
                item: Box::new(JsonShape::String { max_bytes: 6 }),
                min_items: 2,
                max_items: 2,
            }),
            min_items: 1,
            max_items: 3,
        },
    )]);
    let c = Arc::new(JsonConstraint::new(&shape, g.tokenizer()).unwrap());
    let prompt = g.tokenizer().encode("List some pairs", true).unwrap();
    // Random weights, greedy and sampled, tight and loose budgets: the output always parses and fits.
    let mut streams = Vec::new();
    for (i, max_tokens) in [c.min_tokens(), c.min_tokens() + 3, 40, 60]
        .into_iter()
        .enumerate()
    {
        for temperature in [0.0, 1.0] {
            let params = SamplingParams {
                temperature,
                seed: Some(i as u64),
                max_tokens,
                ..SamplingParams::default()
            };
            let request = GenerationRequest {
                prompt: prompt.clone(),
                params,
                constraint: Some(c.clone()),
                kv_budget: None,
                attention: None,
            };
            streams.push((max_tokens, g.submit(request).unwrap()));
        }
    }
    for (max_tokens, mut rx) in streams {
        let (mut text, mut n) = (String::new(), 0);
        loop {
            match rx.recv().await.expect("the stream ends with Done") {
                GenerationEvent::Token(tok) => {
                    text.push_str(&tok.text);
                    n += 1;
                }
                GenerationEvent::Done { reason, usage } => {
                    assert_eq!(
                        reason,
                        FinishReason::Stop,
                        "ends when the value is complete: {text}"
                    );
                    assert_eq!(usage.completion_tokens, n);
                    break;
                }
                GenerationEvent::Failed(e) => panic!("{e}"),
            }
        }
        assert!(n <= max_tokens);
        let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
        let pairs = v["pairs"].as_array().unwrap();
        assert!((1..=3).contains(&pairs.len()), "{text}");
        for p in pairs {
            let p = p.as_array().unwrap();
            assert_eq!(p.len(), 2);
            assert!(
                p.iter()
                    .all(|s| (1..=6).contains(&s.as_str().unwrap().len())),
                "{text}"
            );
        }
    }
    // A budget below the shortest value is refused up front.
    let params = SamplingParams {
        max_tokens: c.min_tokens() - 1,
        ..SamplingParams::default()
    };
    let request = GenerationRequest {
        prompt,
        params,
        constraint: Some(c.clone()),
        kv_budget: None,
        attention: None,
    };
    assert!(matches!(
        g.submit(request),
        Err(EngineError::ConstraintBudget { .. })
    ));
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_format_json_schema_constrains_the_answer() {
    let t = start().await;
    let schema = json!({
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 12},
            "sights": {"type": "array", "items": {"type": "string", "maxLength": 8}, "minItems": 1, "maxItems": 2}
        }
    });
    let format = json!({"type": "json_schema", "json_schema": {"name": "trip", "schema": schema}});
    for temperature in [0.0, 1.0] {
        let (status, a) = t
            .post_json(
                "/v1/chat/completions",
                &chat(
                    "Plan a trip",
                    json!({"max_tokens": 64, "temperature": temperature, "seed": 3, "response_format": format}),
                ),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{a}");
        let content = a["choices"][0]["message"]["content"].as_str().unwrap();
        let v: Value = serde_json::from_str(content).unwrap_or_else(|e| panic!("{content:?}: {e}"));
        assert!(
            (1..=12).contains(&v["city"].as_str().unwrap().len()),
            "{content}"
        );
        let sights = v["sights"].as_array().unwrap();
        assert!((1..=2).contains(&sights.len()), "{content}");
        assert_eq!(a["choices"][0]["finish_reason"], "stop", "{a}");
    }
    // The text endpoint takes it too.
    let (status, c) = t
        .post_json(
            "/v1/completions",
            &json!({"prompt": "A city:", "max_tokens": 40, "temperature": 0,
                    "response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "string", "maxLength": 10}}}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{c}");
    let text = c["choices"][0]["text"].as_str().unwrap();
    assert!(serde_json::from_str::<String>(text).is_ok(), "{text:?}");
    // What cannot be enforced is a 400 naming where; a budget too small for the shortest value too.
    let (status, e) = t
        .post_json(
            "/v1/chat/completions",
            &chat(
                "x",
                json!({"response_format": {"type": "json_schema", "json_schema": {"schema":
                {"type": "object", "properties": {"n": {"type": "integer"}}}}}}),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{e}");
    assert_eq!(e["error"]["code"], "unsupported_schema");
    assert_eq!(e["error"]["param"], "response_format");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("$.properties.n"),
        "{e}"
    );
    let (status, e) = t
        .post_json(
            "/v1/chat/completions",
            &chat("x", json!({"max_tokens": 3, "response_format": format})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{e}");
    assert_eq!(e["error"]["code"], "max_tokens_too_small");
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_budget_evicts_and_a_covering_one_changes_nothing() {
    let t = start().await;
    let long = "the quick brown fox jumps over the lazy dog ".repeat(8);
    let ask = |budget: Option<Value>| {
        let mut extra = json!({"max_tokens": 80});
        if let Some(b) = budget {
            extra["kv_budget"] = b;
        }
        chat(&long, extra)
    };
    let (s, full) = t.post_json("/v1/chat/completions", &ask(None)).await;
    assert_eq!(s, StatusCode::OK, "{full}");
    // A budget larger than the whole sequence: the same greedy answer, nothing evicted.
    let before = evicted(&t).await;
    let (s, covered) = t
        .post_json(
            "/v1/chat/completions",
            &ask(Some(json!({"heavy_tokens": 1000, "recent_tokens": 1000}))),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{covered}");
    assert_eq!(
        covered["choices"][0]["message"],
        full["choices"][0]["message"]
    );
    assert_eq!(evicted(&t).await, before);
    // A small one: the prompt (hundreds of tokens) is cut to its budget at once, and decoding goes on under it
    // (it may stop early: the random model's answer changes).
    let (s, small) = t
        .post_json(
            "/v1/chat/completions",
            &ask(Some(json!({"heavy_ratio": 0.05, "recent_tokens": 16}))),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{small}");
    assert!(
        small["usage"]["completion_tokens"].as_u64().unwrap() >= 1,
        "{small}"
    );
    assert!(evicted(&t).await > before + 100);
    // Bad budgets are a 400 naming kv_budget.
    for bad in [
        json!({"heavy_ratio": 0.1}),
        json!({"heavy_ratio": 0.1, "heavy_tokens": 5, "recent_ratio": 0.1}),
        json!({"heavy_ratio": 1.5, "recent_ratio": 0.1}),
        json!({"heavy_tokens": 0, "recent_ratio": 0.1}),
    ] {
        let (s, e) = t
            .post_json("/v1/chat/completions", &ask(Some(bad.clone())))
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad} -> {e}");
        assert_eq!(e["error"]["param"], "kv_budget", "{bad} -> {e}");
    }
    let unknown = ask(Some(json!({"heavy": 0.1, "recent_ratio": 0.1})));
    let (s, e) = t.post_json("/v1/chat/completions", &unknown).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("heavy_ratio"),
        "{e}"
    );
    t.finish().await;
}

/// The `engram_kv_evicted_tokens_total` counter.
async fn evicted(t: &TestApp) -> u64 {
    let (_, body) = t.get("/metrics").await;
    let text = body.as_str().unwrap_or_default().to_string();
    text.lines()
        .find_map(|l| l.strip_prefix("engram_kv_evicted_tokens_total "))
        .map_or(0, |v| v.trim().parse().unwrap())
}
