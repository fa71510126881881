//! The CPU engine against Hugging Face transformers: tiny random models of each architecture (committed under
//! `tests/fixtures/engine/`, made by `scripts/make_engine_fixtures.py`) with transformers' logits for single
//! prompts, every position of a prompt, a batch, and greedy decode steps. f32 models must match within 1e-4.

use engram_engine::internals::backend::cpu::CpuBackend;
use engram_engine::internals::backend::SeqChunk;
use engram_engine::internals::kv_cache::{KvCache, KvCacheConfig};
use engram_engine::internals::llama::{LlamaModel, StepBatch};
use engram_engine::internals::model::ModelFiles;
use engram_engine::internals::prefill::{
    decode_step, prefill_chunked, prefill_one_by_one, prefill_prepacked,
};
use serde_json::Value;
use std::path::PathBuf;

fn fixture(name: &str) -> (ModelFiles, Value) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/engine")
        .join(name);
    let files = ModelFiles::load(dir.to_str().unwrap()).unwrap();
    let reference: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap())
            .unwrap();
    (files, reference)
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn cache() -> KvCache {
    KvCache::new(KvCacheConfig {
        block_size: 4,
        num_blocks: 256,
    })
}

/// Checks one fixture: per-prompt last logits (one by one and prepacked together), all positions of the 7-token
/// prompt, and 4 greedy decode steps of every prompt batched together.
fn check(name: &str, prompts_key: Option<&str>) {
    let (files, reference) = fixture(name);
    let reference = match prompts_key {
        Some(k) => reference[k].clone(),
        None => reference,
    };
    let tol = reference["tolerance_max_abs_logit"].as_f64().unwrap() as f32;
    let model = LlamaModel::new(CpuBackend, &files).unwrap();
    let prompts: Vec<Vec<u32>> = reference["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| ids(&p["ids"]))
        .collect();

    let mut c = cache();
    let mut kv = model.backend_kv(&c.config()).unwrap();
    let single = prefill_one_by_one(&model, &mut kv, &mut c, &prompts, 0).unwrap();
    let mut c2 = cache();
    let mut kv2 = model.backend_kv(&c2.config()).unwrap();
    let packed = prefill_prepacked(&model, &mut kv2, &mut c2, &prompts, None, 0).unwrap();
    for (i, p) in reference["prompts"].as_array().unwrap().iter().enumerate() {
        let want = floats(&p["last_logits"]);
        let d = max_diff(&single[i], &want);
        assert!(
            d <= tol,
            "{name} prompt {i}: one-by-one max |Δ| {d} > {tol}"
        );
        let d = max_diff(&packed[i], &want);
        assert!(d <= tol, "{name} prompt {i}: prepacked max |Δ| {d} > {tol}");
    }

    // Every position of the prompt that has them.
    let with_all = reference["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .find(|(_, p)| p.get("all_logits").is_some());
    if let Some((i, p)) = with_all {
        let all: Vec<Vec<f32>> = p["all_logits"]
            .as_array()
            .unwrap()
            .iter()
            .map(floats)
            .collect();
        let mut c3 = cache();
        let mut kv3 = model.backend_kv(&c3.config()).unwrap();
        c3.admit(99, &prompts[i]).unwrap();
        let n = prompts[i].len();
        let batch = StepBatch {
            tokens: prompts[i].clone(),
            positions: (0..n as u32).collect(),
            slots: c3.slots_for(99, 0, n).unwrap(),
            seqs: vec![SeqChunk {
                q_len: n,
                context_len: n,
                block_table: c3.table(99).unwrap().blocks.clone(),
                hip: None,
            }],
            logits_rows: (0..n as u32).collect(),
            tracked: Vec::new(),
        };
        let got = model.forward(&mut kv3, &batch, 4).unwrap();
        for (pos, (g, w)) in got.iter().zip(&all).enumerate() {
            let d = max_diff(g, w);
            assert!(d <= tol, "{name} position {pos}: max |Δ| {d}");
        }
    }

    // Greedy decode, every prompt in one batch per step, feeding the reference tokens.
    let steps = reference["prompts"][0]["greedy_tokens"]
        .as_array()
        .unwrap()
        .len();
    for k in 0..steps {
        let feed: Vec<(u64, u32)> = reference["prompts"]
            .as_array()
            .unwrap()
            .iter()
            .enumerate()
            .map(|(i, p)| (i as u64, ids(&p["greedy_tokens"])[k]))
            .collect();
        let logits = decode_step(&model, &mut kv2, &mut c2, &feed).unwrap();
        for (i, p) in reference["prompts"].as_array().unwrap().iter().enumerate() {
            let want = floats(&p["decode_logits"][k]);
            let d = max_diff(&logits[i], &want);
            assert!(
                d <= tol,
                "{name} prompt {i} decode step {k}: max |Δ| {d} > {tol}"
            );
        }
    }
}

#[test]
fn llama_matches_transformers() {
    check("llama", None);
}

#[test]
fn sharded_llama_matches_transformers() {
    check("llama_sharded", None);
}

#[test]
fn llama31_rope_scaling_matches_transformers() {
    check("llama31", None);
}

#[test]
fn qwen2_with_bias_and_tied_embeddings_matches_transformers() {
    check("qwen2", None);
}

#[test]
fn mistral_matches_transformers() {
    check("mistral", None);
}

#[test]
fn bf16_weights_computed_in_f32_match_transformers_f32_compute() {
    check("qwen2_bf16", Some("f32_compute"));
}

/// Prepacked prefill equals one-by-one prefill for random length mixes, including length 1 and prompts exactly as
/// long as the row capacity, with capacities that force several rows.
#[test]
fn prepacked_prefill_equals_one_by_one() {
    let files = ModelFiles::load("synthetic:tiny").unwrap();
    let model = LlamaModel::new(CpuBackend, &files).unwrap();
    let vocab = model.config().vocab_size as u64;
    let mut seed = 12345u64;
    let mut next = |m: u64| {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) % m
    };
    for trial in 0..6 {
        let capacity = [8usize, 16, 33, 64, 40, 100][trial];
        let n = 3 + next(8) as usize;
        let mut prompts: Vec<Vec<u32>> = (0..n)
            .map(|_| {
                let len = 1 + next(capacity as u64) as usize;
                (0..len).map(|_| next(vocab) as u32).collect()
            })
            .collect();
        prompts.push(vec![next(vocab) as u32]);
        prompts.push((0..capacity).map(|_| next(vocab) as u32).collect());
        let (mut c1, mut c2) = (cache(), cache());
        let mut kv1 = model.backend_kv(&c1.config()).unwrap();
        let mut kv2 = model.backend_kv(&c2.config()).unwrap();
        let alone = prefill_one_by_one(&model, &mut kv1, &mut c1, &prompts, 0).unwrap();
        let packed =
            prefill_prepacked(&model, &mut kv2, &mut c2, &prompts, Some(capacity), 0).unwrap();
        for (i, (a, p)) in alone.iter().zip(&packed).enumerate() {
            let d = max_diff(a, p);
            assert!(
                d <= 1e-5,
                "trial {trial} capacity {capacity} prompt {i} (len {}): max |Δ| {d}",
                prompts[i].len()
            );
        }
    }
}

/// A prompt prefilled in chunks (as Dynamic SplitFuse cuts long prompts) gives the same last logits as whole.
#[test]
fn chunked_prefill_equals_whole_prefill() {
    let (files, reference) = fixture("llama");
    let model = LlamaModel::new(CpuBackend, &files).unwrap();
    let prompt = ids(&reference["prompts"][2]["ids"]);
    let want = floats(&reference["prompts"][2]["last_logits"]);
    for chunk in [1usize, 3, 5, 8, prompt.len()] {
        let mut c = cache();
        let mut kv = model.backend_kv(&c.config()).unwrap();
        let got = prefill_chunked(&model, &mut kv, &mut c, &prompt, chunk, 7).unwrap();
        let d = max_diff(&got, &want);
        assert!(d <= 1e-4, "chunk {chunk}: max |Δ| {d}");
    }
}
