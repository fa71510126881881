//! The whole FastDraft recipe for one target: the draft's shape and initialisation from the target, stage 1
//! (pre-training on plain text), stage 2 (alignment on the target's own completions), each written out as a
//! model directory: `OUT/stage1` (the ablation without alignment) and `OUT` itself (the distilled draft).

use std::path::Path;

use candle_core::Device;
use engram_engine::ModelFiles;
use serde::Serialize;

use crate::data::{Example, Windows};
use crate::export::write_model_dir;
use crate::net::DraftNet;
use crate::shape::DraftShape;
use crate::train::{load_stage_params, train_stage, StageConfig, StageReport};
use crate::DraftError;

/// The name of stage 1 (checkpoints, `loss.csv`).
pub const PRETRAIN: &str = "pretrain";
/// The name of stage 2.
pub const ALIGN: &str = "align";

/// How to build a draft.
#[derive(Debug, Clone)]
pub struct DraftPlan {
    /// The draft's shape.
    pub shape: DraftShape,
    /// Seeds the initialisation.
    pub seed: u64,
    /// Tokens per training window.
    pub window: usize,
    /// Start the tied embedding from a projection of the target's (else random).
    pub project_embedding: bool,
    /// Train the softmax over the tokens that occur in the data only ([`DraftNet::restrict_output`]).
    pub restrict_vocab: bool,
    /// Stage 1's settings (`None`: skipped).
    pub pretrain: Option<StageConfig>,
    /// Stage 2's settings (`None`: skipped).
    pub align: Option<StageConfig>,
}

/// The training text of both stages.
#[derive(Debug, Clone, Default)]
pub struct DraftData {
    /// Plain text for stage 1.
    pub pretrain: Vec<Example>,
    /// Prompts with the target's completions for stage 2.
    pub align: Vec<Example>,
}

/// What a build did.
#[derive(Debug, Clone, Serialize)]
pub struct DraftReport {
    /// Parameters of the draft.
    pub params: usize,
    /// Each stage run, in order.
    pub stages: Vec<StageReport>,
    /// Training windows per stage (stage 1, stage 2).
    pub windows: (usize, usize),
}

/// Trains a draft for `target` on `data` as `plan` says, writing checkpoints, `loss.csv`, `loss.svg` and the
/// model directories under `out` (a rerun resumes from the checkpoints).
pub fn build_draft(
    target: &ModelFiles,
    data: &DraftData,
    plan: &DraftPlan,
    out: &Path,
) -> Result<DraftReport, DraftError> {
    fs_err::create_dir_all(out).map_err(crate::io_error(out))?;
    let net = init_net(target, data, plan)?;
    let eos = target.config.eos_token_ids.first().copied().unwrap_or(0);
    let pre = Windows::packed(&data.pretrain, eos, plan.window, plan.seed);
    let align = Windows::per_example(&data.align, eos, plan.window, plan.seed ^ 1);
    let mut report = DraftReport {
        params: net.param_count(),
        stages: Vec::new(),
        windows: (pre.len(), align.len()),
    };
    if let Some(stage) = &plan.pretrain {
        let done = train_stage(&net, &pre, stage, out)?;
        let complete = done.complete;
        report.stages.push(done);
        if !complete {
            return Ok(report);
        }
        write_model_dir(&net, &target.tokenizer, &out.join("stage1"))?;
    }
    if let Some(stage) = &plan.align {
        // A resumed run whose stage 1 was done in an earlier invocation starts from stage 1's end.
        if plan.pretrain.is_none() {
            load_stage_params(&net, out, PRETRAIN)?;
        }
        let done = train_stage(&net, &align, stage, out)?;
        let complete = done.complete;
        report.stages.push(done);
        if !complete {
            return Ok(report);
        }
    }
    write_model_dir(&net, &target.tokenizer, out)?;
    Ok(report)
}

/// The untrained draft `plan` describes for `target` (its training vocabulary drawn from `data` when
/// restricted): what [`build_draft`] trains, and what a stage's checkpoint loads into.
pub fn init_net(
    target: &ModelFiles,
    data: &DraftData,
    plan: &DraftPlan,
) -> Result<DraftNet, DraftError> {
    plan.shape.validate(&target.config)?;
    let config = plan.shape.config(&target.config);
    let embedding = if plan.project_embedding {
        Some(target_embedding(target)?)
    } else {
        None
    };
    let mut net = DraftNet::init(&config, plan.seed, embedding.as_ref())?;
    if plan.restrict_vocab {
        let mut seen: Vec<u32> = data
            .pretrain
            .iter()
            .chain(&data.align)
            .flat_map(|e| e.tokens.iter().copied())
            .collect();
        seen.extend(&target.config.eos_token_ids);
        net.restrict_output(&seen)?;
    }
    Ok(net)
}

/// The target's input embedding `[vocab, hidden]` as f32 (dequantized when the file keeps it quantized).
fn target_embedding(target: &ModelFiles) -> Result<candle_core::Tensor, DraftError> {
    const NAME: &str = "model.embed_tokens.weight";
    match target.weights.quantized(NAME) {
        Some(q) => Ok(q.dequantize(&Device::Cpu)?),
        None => Ok(target.weights.get(NAME)?.clone()),
    }
}
