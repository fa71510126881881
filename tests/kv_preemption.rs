//! A KV cache too small for every running sequence: the engine preempts the newest (its blocks released, its
//! prompt and generated tokens recomputed later) instead of failing the step, so every request finishes, and
//! greedy outputs are token for token those of each request run alone.

use std::sync::Arc;

use engram_engine::internals::backend::cpu::CpuBackend;
use engram_engine::internals::runner::{Engine, EngineConfig};
use engram_engine::internals::start::load_model;
use engram_engine::metrics::PREEMPTIONS;
use engram_engine::{GenerationEvent, GenerationRequest, Generator, SamplingParams};

fn engine(kv_cache_mib: usize) -> Engine {
    let (model, tokenizer, name) = load_model(CpuBackend, "synthetic:tiny").unwrap();
    let config = EngineConfig {
        kv_cache_mib,
        token_budget: 64,
        ..EngineConfig::default()
    };
    Engine::start(model, Arc::new(tokenizer), name, &config).unwrap()
}

/// Byte-level prompts of different lengths.
fn prompts() -> Vec<Vec<u32>> {
    (0..10)
        .map(|i| {
            std::iter::once(256)
                .chain(
                    format!("request {i}: {}", "words ".repeat(i + 1))
                        .bytes()
                        .map(u32::from),
                )
                .collect()
        })
        .collect()
}

/// Submits every prompt at once (greedy, up to 260 new tokens each, no end-of-sequence stop); their tokens.
fn run(engine: &Engine, prompts: &[Vec<u32>]) -> Vec<Vec<u32>> {
    let params = SamplingParams {
        temperature: 0.0,
        max_tokens: 260,
        ..SamplingParams::default()
    };
    let streams: Vec<_> = prompts
        .iter()
        .map(|p| {
            engine
                .submit(GenerationRequest::new(p.clone(), params.clone()))
                .unwrap()
        })
        .collect();
    streams
        .into_iter()
        .map(|mut rx| {
            let mut tokens = Vec::new();
            loop {
                match rx.blocking_recv().expect("the engine answers") {
                    GenerationEvent::Token(t) => tokens.push(t.token),
                    GenerationEvent::Done { .. } => return tokens,
                    GenerationEvent::Failed(e) => panic!("generation failed: {e}"),
                }
            }
        })
        .collect()
}

#[test]
fn a_full_cache_preempts_and_every_request_finishes_unchanged() {
    let prompts = prompts();
    // 1 MiB holds 2,048 tokens of the tiny model; ten sequences of up to ~290 tokens need more.
    let before = PREEMPTIONS.get();
    let crowded = run(&engine(1), &prompts);
    assert!(PREEMPTIONS.get() > before, "the cache never filled");
    let roomy = engine(64);
    for (i, (p, got)) in prompts.iter().zip(&crowded).enumerate() {
        let alone = run(&roomy, std::slice::from_ref(p)).remove(0);
        assert_eq!(got, &alone, "request {i}");
    }
    // Together the sequences held more tokens than the cache has slots.
    let held: usize = prompts
        .iter()
        .zip(&crowded)
        .map(|(p, g)| p.len() + g.len())
        .sum();
    assert!(held > 2048, "{held} tokens");
}
