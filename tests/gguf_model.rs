//! Real GGUF models from the model cache (`scripts/fetch-model.sh NAME`; `make test` fetches SmolLM2) against
//! references computed outside Engram (`scripts/gguf_reference.py`: transformers' GGUF tokenizer, a NumPy
//! forward pass over gguf-py's dequantized weights), committed in `tests/fixtures/gguf/`. A model that is not in
//! the cache is skipped with a message; SmolLM2 is always there under `make test`.

mod common;

use std::path::PathBuf;

use axum::http::StatusCode;
use common::{cached_llm, Db, TestApp};
use engram_engine::internals::backend::cpu::CpuBackend;
use engram_engine::internals::kv_cache::{KvCache, KvCacheConfig};
use engram_engine::internals::llama::LlamaModel;
use engram_engine::internals::model::{Architecture, ChatMessage, ModelError, ModelFiles};
use engram_engine::internals::prefill::prefill_one_by_one;
use serde_json::{json, Value};

/// (fixture name, GGUF file name).
const MODELS: [(&str, &str); 3] = [
    ("smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    (
        "qwen2.5-coder-0.5b",
        "qwen2.5-coder-0.5b-instruct-awq.q4_k_m.gguf",
    ),
    (
        "qwen2.5-coder-1.5b",
        "qwen2.5-coder-1.5b-instruct.q4_k_m.gguf",
    ),
];

/// Log-probabilities may differ by this much: the engine multiplies with activations quantized to 8 bits (as
/// llama.cpp does) where the reference keeps them in float64.
const LOG_PROB_TOLERANCE: f64 = 0.35;

fn cached(i: usize) -> Option<PathBuf> {
    let found = cached_llm(MODELS[i].1);
    if found.is_none() {
        eprintln!(
            "skipped: {} is not in the model cache (scripts/fetch-model.sh {})",
            MODELS[i].1, MODELS[i].0
        );
    }
    found
}

fn reference(i: usize) -> Value {
    let path = common::fixture(&format!("gguf/{}.json", MODELS[i].0));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn whitespace_before_digit(text: &str) -> bool {
    let chars: Vec<char> = text.chars().collect();
    chars
        .windows(2)
        .any(|w| w[0].is_whitespace() && w[1].is_ascii_digit())
}

fn log_softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = logits.iter().map(|&l| (l as f64 - max).exp()).sum();
    logits.iter().map(|&l| l as f64 - max - sum.ln()).collect()
}

/// The tokenizer equals transformers' on every string; the last-position next-token distribution of every prompt
/// has the reference's argmax and its top-20 log-probabilities within [`LOG_PROB_TOLERANCE`].
fn check_against_reference(i: usize) {
    let Some(path) = cached(i) else { return };
    let files = ModelFiles::load(path.to_str().unwrap()).unwrap();
    let reference = reference(i);
    let mut bad = Vec::new();
    let mut exempt = 0;
    for case in reference["tokenizer"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let got = files.tokenizer.encode(text, false).unwrap();
        if got == ids(&case["ids"]) {
            continue;
        }
        // SmolLM2's own tokenizer.json splits digits *before* the byte-level regex (as Engram does), so a
        // whitespace run before a digit stays one piece; transformers' GGUF converter splits digits after it.
        if MODELS[i].0 == "smollm2" && whitespace_before_digit(text) {
            exempt += 1;
            continue;
        }
        bad.push(format!("{text:?}: {got:?} vs {}", case["ids"]));
    }
    assert!(
        bad.is_empty(),
        "{}: {} tokenizations differ:\n{}",
        MODELS[i].0,
        bad.len(),
        bad.join("\n")
    );
    assert!(
        exempt <= 3,
        "{exempt} strings with whitespace before a digit differ"
    );
    let model = LlamaModel::new(CpuBackend, &files).unwrap();
    let prompts: Vec<Vec<u32>> = reference["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| ids(&p["ids"]))
        .collect();
    for (p, case) in prompts.iter().zip(reference["prompts"].as_array().unwrap()) {
        let text = case["text"].as_str().unwrap();
        assert_eq!(
            &files.tokenizer.encode(text, false).unwrap(),
            p,
            "prompt ids"
        );
    }
    let mut cache = KvCache::new(KvCacheConfig {
        block_size: 16,
        num_blocks: 64,
    });
    let mut kv = model.backend_kv(&cache.config()).unwrap();
    let last = prefill_one_by_one(&model, &mut kv, &mut cache, &prompts, 0).unwrap();
    let mut worst = 0.0f64;
    for (logits, case) in last.iter().zip(reference["prompts"].as_array().unwrap()) {
        let lp = log_softmax(logits);
        let top = case["top"].as_array().unwrap();
        let argmax = (0..lp.len()).fold(0, |b, j| if lp[j] > lp[b] { j } else { b });
        assert_eq!(
            argmax as u64,
            top[0][0].as_u64().unwrap(),
            "{}: argmax",
            MODELS[i].0
        );
        for entry in top {
            let (id, want) = (
                entry[0].as_u64().unwrap() as usize,
                entry[1].as_f64().unwrap(),
            );
            worst = worst.max((lp[id] - want).abs());
        }
    }
    eprintln!("{}: worst top-20 |Δ log p| = {worst:.4}", MODELS[i].0);
    assert!(
        worst <= LOG_PROB_TOLERANCE,
        "{}: top-20 log-probabilities differ by {worst} > {LOG_PROB_TOLERANCE}",
        MODELS[i].0
    );
}

#[test]
fn smollm2_matches_the_reference() {
    check_against_reference(0);
}

#[test]
fn qwen_coder_0_5b_matches_the_reference() {
    check_against_reference(1);
}

#[test]
fn qwen_coder_1_5b_matches_the_reference() {
    check_against_reference(2);
}

#[test]
fn smollm2_shape_template_and_stop_tokens_come_from_the_metadata() {
    let Some(path) = cached(0) else { return };
    let files = ModelFiles::load(path.to_str().unwrap()).unwrap();
    let c = &files.config;
    assert_eq!(c.architecture, Architecture::Llama);
    assert_eq!(
        (
            c.vocab_size,
            c.hidden_size,
            c.num_layers,
            c.num_heads,
            c.num_kv_heads
        ),
        (49152, 576, 30, 9, 3)
    );
    assert!(c.tie_word_embeddings && !c.attention_bias);
    let prompt = files
        .tokenizer
        .apply_chat_template(&[ChatMessage::new("user", "Hi")], true)
        .unwrap();
    assert!(
        prompt.ends_with("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"),
        "{prompt:?}"
    );
    let im_end = files.tokenizer.token_to_id("<|im_end|>").unwrap();
    assert!(files.tokenizer.eos_token_ids().contains(&im_end));
    // The directory holding the file loads too.
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(&path, dir.path().join("model.gguf")).unwrap();
    let again = ModelFiles::load(dir.path().to_str().unwrap()).unwrap();
    assert_eq!(again.config, files.config);
}

#[test]
fn a_truncated_file_is_a_named_error() {
    let Some(path) = cached(0) else { return };
    let dir = tempfile::tempdir().unwrap();
    let cut = dir.path().join("cut.gguf");
    std::fs::copy(&path, &cut).unwrap();
    let len = std::fs::metadata(&cut).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&cut)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let err = ModelFiles::load(cut.to_str().unwrap()).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, ModelError::Invalid { .. }), "{msg}");
    assert!(
        msg.contains("cut.gguf") && msg.contains("truncated"),
        "{msg}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smollm2_answers_through_the_chat_endpoint() {
    let Some(path) = cached(0) else { return };
    let t = TestApp::start(Db::Sqlite, |c| {
        c.engine.model = Some(path.display().to_string());
        c.engine.kv_cache_mib = 64;
    })
    .await;
    let body = json!({
        "messages": [{"role": "user", "content": "What is the capital of France? Answer in one word."}],
        "max_tokens": 16, "temperature": 0
    });
    let (status, answer) = t.post_json("/v1/chat/completions", &body).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let text = answer["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(text.contains("Paris"), "{answer}");
    assert_eq!(answer["choices"][0]["finish_reason"], "stop", "{answer}");
    t.finish().await;
}
