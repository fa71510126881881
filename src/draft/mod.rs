//! `engram draft train`: FastDraft for the served model. The training text comes from the store's passages
//! and/or files ([`text`]); stage 2's prompts (free-text continuations and QA instructions over passages, with
//! questions the target writes itself) are answered by the target through the engine ([`prompts`]); the
//! training itself is `engram_draft`'s.

pub mod prompts;
pub mod text;

use std::path::{Path, PathBuf};

use engram_draft::data::Example;
use engram_draft::pipeline::{build_draft, DraftData, DraftPlan, DraftReport};
use engram_engine::{open_engine, EngineConfig, ModelFiles};

/// Why `engram draft train` failed.
#[derive(Debug, thiserror::Error)]
pub enum DraftCommandError {
    /// Training or writing the draft failed.
    #[error(transparent)]
    Draft(#[from] engram_draft::DraftError),
    /// The target could not be loaded or started.
    #[error("target model: {0}")]
    Target(String),
    /// The training text could not be read.
    #[error("training text: {0}")]
    Text(String),
}

/// Everything `engram draft train` needs besides the text.
#[derive(Debug, Clone)]
pub struct DraftJob {
    /// The target model spec (GGUF file, model directory or `synthetic:NAME`).
    pub target: String,
    /// The output directory (the distilled draft; `stage1/` inside it: the stage-1-only draft).
    pub out: PathBuf,
    /// How to train.
    pub plan: DraftPlan,
    /// Stage 2 prompts: free-text continuations and QA instructions (each answered greedily and sampled).
    pub prompts: prompts::PromptPlan,
    /// The engine that runs the target for stage 2 (device, cache, batch).
    pub engine: EngineConfig,
}

/// Builds the draft: stage 2's data is generated once (and kept in `OUT/align-data.jsonl`, which a rerun
/// reuses), then both stages train, resuming from any checkpoint under `OUT`.
pub fn run(
    job: &DraftJob,
    passages: &[(String, String)],
) -> Result<DraftReport, DraftCommandError> {
    let files =
        ModelFiles::load(&job.target).map_err(|e| DraftCommandError::Target(e.to_string()))?;
    let pretrain: Vec<Example> = text::tokenize_passages(&files.tokenizer, passages)?;
    let cache = job.out.join("align-data.jsonl");
    let wanted = job.prompts.free_text + job.prompts.qa > 0 && job.plan.align.is_some();
    let align = match prompts::read_examples(&cache)? {
        Some(examples) => examples,
        None if !wanted => Vec::new(),
        None => {
            let engine = open_engine(&job.target, &job.engine)
                .map_err(|e| DraftCommandError::Target(e.to_string()))?;
            let examples =
                prompts::align_examples(&engine, &files.tokenizer, passages, &job.prompts)?;
            fs_err::create_dir_all(&job.out).map_err(|e| DraftCommandError::Text(e.to_string()))?;
            prompts::write_examples(&cache, &examples)?;
            examples
        }
    };
    let data = DraftData { pretrain, align };
    Ok(build_draft(&files, &data, &job.plan, &job.out)?)
}

/// The passages of every file given to `engram draft train --text` ([`text::read_passages`]), in order.
pub fn read_text_files(paths: &[PathBuf]) -> Result<Vec<(String, String)>, DraftCommandError> {
    let mut out = Vec::new();
    for p in paths {
        out.extend(text::read_passages(Path::new(p))?);
    }
    Ok(out)
}
