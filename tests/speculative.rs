//! Speculative decoding through the engine on the synthetic tiny model: greedy output is token for token the
//! output of plain decoding with every proposer (prompt lookup, a draft that is a copy of the target, a draft
//! that disagrees), on both the on-device argmax path and the host path (logprobs, repetition penalty); usage
//! and metrics count proposals, acceptances and target steps; the endpoint reports them.

mod common;

use std::sync::Arc;

use common::{Db, TestApp};
use engram_engine::internals::backend::cpu::CpuBackend;
use engram_engine::internals::runner::{Engine, EngineConfig};
use engram_engine::internals::speculative::{SpeculationMethod, SpeculativeConfig};
use engram_engine::internals::start::load_model;
use engram_engine::SamplingParams;
use engram_engine::{GenerationEvent, GenerationRequest, Generator, Usage};
use serde_json::json;

const TARGET: &str = "synthetic:tiny";

fn engine(method: SpeculationMethod, draft: Option<&str>, adaptive: bool) -> Engine {
    let (model, tokenizer, name) = load_model(CpuBackend, TARGET).unwrap();
    let config = EngineConfig {
        kv_cache_mib: 16,
        token_budget: 96,
        speculative: SpeculativeConfig {
            method,
            draft_model: draft.map(str::to_string),
            adaptive,
            ..SpeculativeConfig::default()
        },
        ..EngineConfig::default()
    };
    match draft {
        Some(d) => {
            let (draft, _, _) = load_model(CpuBackend, d).unwrap();
            Engine::start_with_draft(model, draft, Arc::new(tokenizer), name, &config).unwrap()
        }
        None => Engine::start(model, Arc::new(tokenizer), name, &config).unwrap(),
    }
}

/// Byte-level prompts with repeated phrases (so prompt lookup finds matches), submitted together.
fn prompts() -> Vec<Vec<u32>> {
    [
        "the cat sat on the mat and the cat sat on the",
        "alpha beta gamma alpha beta gamma alpha beta",
        "Where was the bridge built? The bridge was built in",
        "x",
    ]
    .iter()
    .map(|s| {
        std::iter::once(256)
            .chain(s.bytes().map(u32::from))
            .collect()
    })
    .collect()
}

/// Runs every prompt with `params` (max_tokens varied per prompt), all at once; outputs and usage in order.
fn run(engine: &Engine, params: &SamplingParams) -> Vec<(Vec<u32>, Usage)> {
    let limits = [40, 23, 1, 17];
    let rx: Vec<_> = prompts()
        .into_iter()
        .zip(limits)
        .map(|(p, max_tokens)| {
            let params = SamplingParams {
                max_tokens,
                ..params.clone()
            };
            engine.submit(GenerationRequest::new(p, params)).unwrap()
        })
        .collect();
    rx.into_iter()
        .map(|mut rx| {
            let mut tokens = Vec::new();
            loop {
                match rx.blocking_recv().expect("the engine answers") {
                    GenerationEvent::Token(t) => tokens.push(t.token),
                    GenerationEvent::Done { usage, .. } => return (tokens, usage),
                    GenerationEvent::Failed(e) => panic!("generation failed: {e}"),
                }
            }
        })
        .collect()
}

fn greedy() -> SamplingParams {
    SamplingParams {
        temperature: 0.0,
        ..SamplingParams::default()
    }
}

fn outputs(r: &[(Vec<u32>, Usage)]) -> Vec<Vec<u32>> {
    r.iter().map(|x| x.0.clone()).collect()
}

#[test]
fn greedy_output_is_identical_with_every_proposer() {
    let variants = [
        greedy(),
        // Host path: logprobs need the full logits.
        SamplingParams {
            logprobs: Some(2),
            ..greedy()
        },
        // Host path with a penalty that depends on the tokens accepted so far.
        SamplingParams {
            repetition_penalty: Some(1.3),
            ..greedy()
        },
    ];
    let plain = engine(SpeculationMethod::Off, None, true);
    let lookup = engine(SpeculationMethod::PromptLookup, None, false);
    let copy = engine(SpeculationMethod::Draft, Some(TARGET), false);
    let other = engine(SpeculationMethod::Draft, Some("synthetic:tiny@7"), false);
    for params in &variants {
        let want = run(&plain, params);
        assert!(want.iter().all(|r| r.1.proposed_tokens == 0));
        assert!(want
            .iter()
            .all(|r| r.1.target_steps == r.1.completion_tokens));
        for (name, e) in [("lookup", &lookup), ("copy", &copy), ("other", &other)] {
            let got = run(e, params);
            assert_eq!(outputs(&got), outputs(&want), "{name}, {params:?}");
            for (r, w) in got.iter().zip(&want) {
                assert_eq!(r.1.completion_tokens, w.1.completion_tokens);
                assert!(r.1.accepted_tokens <= r.1.proposed_tokens);
                // Each target step emits its accepted guesses plus one token of its own, except a last step that
                // ends (end of sequence) on an accepted guess.
                let counted = r.1.target_steps + r.1.accepted_tokens;
                assert!(
                    counted == r.1.completion_tokens || counted == r.1.completion_tokens + 1,
                    "{name}: {:?}",
                    r.1
                );
            }
        }
        // A copy of the target agrees with it: most guesses are accepted and steps are saved.
        let got = run(&copy, params);
        let (proposed, accepted, tokens, steps) = got.iter().fold((0, 0, 0, 0), |a, r| {
            (
                a.0 + r.1.proposed_tokens,
                a.1 + r.1.accepted_tokens,
                a.2 + r.1.completion_tokens,
                a.3 + r.1.target_steps,
            )
        });
        assert!(proposed > 0);
        assert!(accepted * 10 >= proposed * 9, "{accepted}/{proposed}");
        assert!(steps * 2 < tokens, "{steps} steps for {tokens} tokens");
    }
}

#[test]
fn the_switch_turns_a_useless_draft_off() {
    // Greedy on a disagreeing draft with adaptation on: after the first measurements, plain decoding wins and
    // speculation only comes back for probes, with k shrunk to 1.
    let e = engine(SpeculationMethod::Draft, Some("synthetic:tiny@7"), true);
    let params = SamplingParams {
        max_tokens: 200,
        ..greedy()
    };
    let prompt: Vec<u32> = std::iter::once(256)
        .chain(b"hello".iter().map(|&b| b as u32))
        .collect();
    let mut rx = e.submit(GenerationRequest::new(prompt, params)).unwrap();
    let usage = loop {
        match rx.blocking_recv().unwrap() {
            GenerationEvent::Done { usage, .. } => break usage,
            GenerationEvent::Failed(e) => panic!("{e}"),
            GenerationEvent::Token(_) => {}
        }
    };
    // Without the switch every step would propose (k ≥ 1): at least one guess per step.
    assert!(usage.proposed_tokens * 2 < usage.target_steps, "{usage:?}");
}

#[test]
fn sampled_requests_speculate_and_finish() {
    let copy = engine(SpeculationMethod::Draft, Some(TARGET), false);
    let params = SamplingParams {
        temperature: 0.8,
        top_p: Some(0.95),
        seed: Some(3),
        ..SamplingParams::default()
    };
    let got = run(&copy, &params);
    let accepted: usize = got.iter().map(|r| r.1.accepted_tokens).sum();
    assert!(accepted > 0, "{got:?}");
    for (r, limit) in got.iter().zip([40, 23, 1, 17]) {
        assert!((1..=limit).contains(&r.1.completion_tokens));
        assert_eq!(r.0.len(), r.1.completion_tokens);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_endpoint_reports_speculation_in_usage_and_metrics() {
    let t = TestApp::start(Db::Sqlite, |c| {
        c.engine.model = Some(TARGET.into());
        c.engine.kv_cache_mib = 16;
        c.engine.token_budget = 64;
        c.engine.speculative.method = SpeculationMethod::Draft;
        c.engine.speculative.draft_model = Some(TARGET.into());
        c.engine.speculative.adaptive = false;
    })
    .await;
    let (status, a) = t
        .post_json(
            "/v1/completions",
            &json!({"prompt": "Once upon a time", "max_tokens": 24, "temperature": 0}),
        )
        .await;
    assert_eq!(status, axum::http::StatusCode::OK, "{a}");
    let s = &a["usage"]["speculative"];
    assert!(s["proposed_tokens"].as_u64().unwrap() > 0, "{a}");
    let rate = s["acceptance_rate"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&rate), "{a}");
    assert!(s["tokens_per_target_step"].as_f64().unwrap() > 1.0, "{a}");
    let (status, metrics) = t.get("/metrics").await;
    assert_eq!(status, axum::http::StatusCode::OK);
    let metrics = metrics.as_str().unwrap_or_default().to_string();
    for name in [
        "generation_speculative_proposed_tokens_total",
        "generation_speculative_accepted_tokens_total",
        "generation_target_steps_total",
    ] {
        assert!(metrics.contains(name), "{name} missing");
    }
    // A draft model without the method's settings is a clear configuration error.
    let err = engram::config::Config {
        engine: EngineConfig {
            speculative: SpeculativeConfig {
                method: SpeculationMethod::Draft,
                ..SpeculativeConfig::default()
            },
            ..EngineConfig::default()
        },
        ..engram::config::Config::default()
    }
    .validate()
    .unwrap_err()
    .to_string();
    assert!(err.contains("engine.speculative.draft_model"), "{err}");
}
