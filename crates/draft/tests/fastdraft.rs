//! FastDraft on the synthetic tiny target (random weights, 512 tokens): the loss falls; a draft distilled on the
//! target's own completions is accepted more often than an untrained one; a run stopped mid-way resumes from its
//! checkpoint and ends bit for bit where an uninterrupted run ends; the written directory loads as the engine's
//! draft and greedy output stays the output of plain decoding; the engine scores tokens with the written draft as
//! training computed them (the full-vocabulary softmax, unseen tokens included).

use std::path::Path;
use std::sync::Arc;

use candle_core::{Device, Tensor};
use engram_draft::data::Example;
use engram_draft::generate::{complete, distillation_examples};
use engram_draft::optim::AdamWConfig;
use engram_draft::pipeline::{build_draft, init_net, DraftData, DraftPlan, ALIGN, PRETRAIN};
use engram_draft::shape::DraftShape;
use engram_draft::train::{load_stage_params, read_loss_csv, StageConfig};
use engram_engine::internals::backend::cpu::CpuBackend;
use engram_engine::internals::runner::{Engine, EngineConfig};
use engram_engine::internals::start::load_model;
use engram_engine::{
    DraftWeights, GenerationEvent, GenerationRequest, Generator, ModelFiles, SamplingParams,
    SpeculationMethod, SpeculativeConfig,
};

const TARGET: &str = "synthetic:tiny";

fn engine(draft: Option<&Path>) -> Engine {
    let (model, tokenizer, name) = load_model(CpuBackend, TARGET).unwrap();
    let config = EngineConfig {
        kv_cache_mib: 32,
        token_budget: 256,
        speculative: SpeculativeConfig {
            method: if draft.is_some() {
                SpeculationMethod::Draft
            } else {
                SpeculationMethod::Off
            },
            draft_model: draft.map(|d| d.display().to_string()),
            adaptive: false,
            k: 4,
            max_k: 4,
            draft_weights: DraftWeights::AsStored,
            ..SpeculativeConfig::default()
        },
        ..EngineConfig::default()
    };
    match draft {
        Some(d) => {
            let (draft, _, _) = load_model(CpuBackend, &d.display().to_string()).unwrap();
            Engine::start_with_draft(model, draft, Arc::new(tokenizer), name, &config).unwrap()
        }
        None => Engine::start(model, Arc::new(tokenizer), name, &config).unwrap(),
    }
}

/// Prompts of byte tokens drawn from a fixed stream (BOS first).
fn prompts(n: usize, offset: u64) -> Vec<Vec<u32>> {
    let mut state = 1234 + offset;
    (0..n)
        .map(|_| {
            let len = 4 + (engram_draft::data::splitmix(&mut state) % 8) as usize;
            std::iter::once(256)
                .chain(
                    (0..len).map(|_| 97 + (engram_draft::data::splitmix(&mut state) % 26) as u32),
                )
                .collect()
        })
        .collect()
}

fn greedy(max_tokens: usize) -> SamplingParams {
    SamplingParams {
        temperature: 0.0,
        max_tokens,
        ..SamplingParams::default()
    }
}

fn stage(name: &str, steps: u64, lr: f64) -> StageConfig {
    StageConfig {
        name: name.into(),
        steps,
        batch_rows: 8,
        lr,
        warmup: 5,
        lr_floor: 0.1,
        clip: 1.0,
        adamw: AdamWConfig::default(),
        checkpoint_every: 5,
        seed: 7,
        stop_after: None,
        progress: false,
    }
}

fn plan(pretrain: Option<StageConfig>, align: Option<StageConfig>) -> DraftPlan {
    DraftPlan {
        shape: DraftShape::new(2, 64),
        seed: 3,
        window: 32,
        project_embedding: true,
        restrict_vocab: true,
        pretrain,
        align,
    }
}

/// The target's greedy continuations of 192 prompts (its own text: stage 2's data) and, for stage 1, the same
/// text as plain sequences.
fn data(target: &Engine) -> DraftData {
    let align = distillation_examples(target, &prompts(192, 0), &[greedy(24)], 0.0).unwrap();
    let pretrain = align
        .iter()
        .map(|e| Example::plain(e.tokens.clone()))
        .collect();
    DraftData { pretrain, align }
}

/// Accepted / proposed guesses of `draft` at k = 4 over held-out prompts, and whether greedy outputs equal
/// plain decoding's.
fn acceptance(draft: &Path, plain: &[Vec<u32>], held_out: &[Vec<u32>]) -> (f64, bool) {
    let engine = engine(Some(draft));
    let (mut proposed, mut accepted, mut identical) = (0, 0, true);
    for (prompt, reference) in held_out.iter().zip(plain) {
        let mut rx = engine
            .submit(GenerationRequest::new(prompt.clone(), greedy(24)))
            .unwrap();
        let mut tokens = Vec::new();
        loop {
            match rx.blocking_recv().unwrap() {
                GenerationEvent::Token(t) => tokens.push(t.token),
                GenerationEvent::Done { usage, .. } => {
                    proposed += usage.proposed_tokens;
                    accepted += usage.accepted_tokens;
                    break;
                }
                GenerationEvent::Failed(e) => panic!("{e}"),
            }
        }
        identical &= &tokens == reference;
    }
    (accepted as f64 / proposed.max(1) as f64, identical)
}

#[test]
fn distilled_draft_learns_is_accepted_more_and_keeps_greedy_output() {
    let files = ModelFiles::load(TARGET).unwrap();
    let target = engine(None);
    let data = data(&target);
    let held_out = prompts(12, 99);
    let plain = complete(&target, &held_out, &greedy(24)).unwrap();
    drop(target);

    let dir = tempfile::tempdir().unwrap();
    let untrained = dir.path().join("untrained");
    let mut p = plan(Some(stage(PRETRAIN, 1, 1e-9)), None);
    p.pretrain.as_mut().unwrap().warmup = 1;
    build_draft(&files, &data, &p, &untrained).unwrap();

    let trained = dir.path().join("trained");
    let report = build_draft(
        &files,
        &data,
        &plan(
            Some(stage(PRETRAIN, 150, 1e-2)),
            Some(stage(ALIGN, 150, 5e-3)),
        ),
        &trained,
    )
    .unwrap();
    let align = &report.stages[1];
    assert!(
        align.last_loss < 0.7 * report.stages[0].first_loss,
        "loss did not fall: {report:?}"
    );
    let rows = read_loss_csv(&trained.join("loss.csv")).unwrap();
    assert_eq!(rows.len(), 300);
    assert!(
        trained.join("loss.svg").is_file() && trained.join("stage1/model.safetensors").is_file()
    );

    let (before, same_before) = acceptance(&untrained, &plain, &held_out);
    let (after, same_after) = acceptance(&trained, &plain, &held_out);
    assert!(
        same_before && same_after,
        "greedy output changed with a draft"
    );
    eprintln!("acceptance: untrained {before:.3}, distilled {after:.3}");
    // A random-weight target is a hard function to imitate; the distilled draft is still many times better.
    assert!(
        after > before + 0.1 && after > 5.0 * before,
        "distilled acceptance {after:.3} is not above the untrained draft's {before:.3}"
    );
}

#[test]
fn a_stopped_run_resumes_and_ends_where_an_uninterrupted_one_does() {
    let files = ModelFiles::load(TARGET).unwrap();
    let data = data(&engine(None));
    let dir = tempfile::tempdir().unwrap();
    let both = |stop1: Option<u64>, stop2: Option<u64>| {
        let mut p = plan(
            Some(stage(PRETRAIN, 12, 1e-2)),
            Some(stage(ALIGN, 14, 5e-3)),
        );
        p.pretrain.as_mut().unwrap().stop_after = stop1;
        p.align.as_mut().unwrap().stop_after = stop2;
        p
    };
    let full = dir.path().join("full");
    build_draft(&files, &data, &both(None, None), &full).unwrap();

    // Stopped at step 7 of stage 1 (its last checkpoint: step 5), then at step 8 of stage 2 (checkpoint: 5).
    let resumed = dir.path().join("resumed");
    let r = build_draft(&files, &data, &both(Some(7), None), &resumed).unwrap();
    assert!(!r.stages[0].complete && r.stages.len() == 1);
    let r = build_draft(&files, &data, &both(None, Some(8)), &resumed).unwrap();
    assert_eq!((r.stages[0].resumed_from, r.stages[1].step), (5, 8));
    let r = build_draft(&files, &data, &both(None, None), &resumed).unwrap();
    assert_eq!(
        (r.stages[0].resumed_from, r.stages[1].resumed_from),
        (12, 5)
    );
    assert!(r.stages[1].complete);

    for file in ["model.safetensors", "stage1/model.safetensors"] {
        let load = |d: &Path| {
            candle_core::safetensors::load(d.join(file), &candle_core::Device::Cpu).unwrap()
        };
        let (a, b) = (load(&full), load(&resumed));
        assert_eq!(a.len(), b.len());
        for (name, t) in &a {
            let x: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
            let y: Vec<f32> = b[name].flatten_all().unwrap().to_vec1().unwrap();
            assert!(x == y, "{file}: `{name}` differs after resuming");
        }
    }
    assert_eq!(
        read_loss_csv(&full.join("loss.csv")).unwrap(),
        read_loss_csv(&resumed.join("loss.csv")).unwrap()
    );
}

#[test]
fn a_checkpoint_of_other_settings_is_refused() {
    let files = ModelFiles::load(TARGET).unwrap();
    let data = data(&engine(None));
    let dir = tempfile::tempdir().unwrap();
    let mut p = plan(Some(stage(PRETRAIN, 6, 1e-2)), None);
    build_draft(&files, &data, &p, dir.path()).unwrap();
    p.pretrain.as_mut().unwrap().batch_rows = 4;
    let msg = build_draft(&files, &data, &p, dir.path())
        .unwrap_err()
        .to_string();
    assert!(msg.contains("other settings"), "{msg}");
}

#[test]
fn the_written_draft_scores_tokens_as_training_does() {
    let files = ModelFiles::load(TARGET).unwrap();
    let data = data(&engine(None));
    let dir = tempfile::tempdir().unwrap();
    let p = plan(Some(stage(PRETRAIN, 20, 1e-2)), None);
    build_draft(&files, &data, &p, dir.path()).unwrap();
    let net = init_net(&files, &data, &p).unwrap();
    load_stage_params(&net, dir.path(), PRETRAIN).unwrap();

    let (model, tokenizer, name) =
        load_model(CpuBackend, &dir.path().display().to_string()).unwrap();
    let config = EngineConfig {
        kv_cache_mib: 32,
        token_budget: 256,
        ..EngineConfig::default()
    };
    let written = Engine::start(model, Arc::new(tokenizer), name, &config).unwrap();
    for e in data.align.iter().take(4) {
        let tokens = &e.tokens;
        let split = 4;
        let scores = written
            .score(vec![(tokens[..split].to_vec(), tokens[split..].to_vec())])
            .unwrap();
        // The training loss over the same predictions (positions split-1 .. end-1 predict tokens split ..).
        let n = tokens.len() - 1;
        let ids = Tensor::from_vec(tokens[..n].to_vec(), (1, n), &Device::Cpu).unwrap();
        let targets = Tensor::from_vec(tokens[1..].to_vec(), (1, n), &Device::Cpu).unwrap();
        let w: Vec<f32> = (0..n)
            .map(|i| if i + 1 >= split { 1.0 } else { 0.0 })
            .collect();
        let counted = w.iter().sum::<f32>() as f64;
        let weights = Tensor::from_vec(w, (1, n), &Device::Cpu).unwrap();
        let loss = net.loss(&ids, &targets, &weights).unwrap();
        let trained = -(loss.to_scalar::<f32>().unwrap() as f64) * counted;
        let served = scores.log_probs[0];
        assert!(
            (trained - served).abs() < 1e-3 * served.abs().max(1.0),
            "training says {trained}, the engine says {served}"
        );
    }
}
