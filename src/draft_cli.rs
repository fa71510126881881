//! `engram draft train`'s flags and the command itself.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use engram::config::Config;
use engram::draft::prompts::PromptPlan;
use engram::draft::{read_text_files, run, DraftJob};
use engram::store::Store;
use engram_draft::optim::AdamWConfig;
use engram_draft::pipeline::{DraftPlan, ALIGN, PRETRAIN};
use engram_draft::shape::DraftShape;
use engram_draft::train::StageConfig;
use engram_engine::EngineConfig;

/// `engram draft ...`.
#[derive(Subcommand, Debug)]
pub enum DraftCommand {
    /// Train a draft model for a target (FastDraft: pre-training on text, then alignment on the target's own
    /// answers), written as a model directory for `engine.speculative.draft_model`.
    Train(TrainArgs),
}

/// `engram draft train`.
#[derive(Args, Debug)]
pub struct TrainArgs {
    #[command(flatten)]
    pub storage: crate::StorageFlags,
    /// The target: a GGUF file, a model directory, or `synthetic:NAME`.
    #[arg(long)]
    pub model: String,
    /// Output directory: the distilled draft, `stage1/` (the draft before alignment), `loss.csv`, `loss.svg`,
    /// `checkpoints/`, `align-data.jsonl`. Rerunning the same command resumes.
    #[arg(long)]
    pub out: PathBuf,
    /// Training text files (txt, md, json, jsonl).
    #[arg(long)]
    pub text: Vec<PathBuf>,
    /// Also train on every passage in the store (`--data-dir` / `--database-url`).
    #[arg(long)]
    pub from_store: bool,
    /// Draft blocks.
    #[arg(long, default_value_t = 2)]
    pub layers: usize,
    /// Draft width (a multiple of 64; default: an eighth of the target's, 128 to 512).
    #[arg(long)]
    pub width: Option<usize>,
    /// Tokens per training window.
    #[arg(long, default_value_t = 256)]
    pub window: usize,
    /// Windows per batch.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Stage 1 steps (0: skip stage 1).
    #[arg(long, default_value_t = 400)]
    pub pretrain_steps: u64,
    /// Stage 2 steps (0: skip stage 2).
    #[arg(long, default_value_t = 300)]
    pub align_steps: u64,
    /// Peak learning rate of stage 1 (stage 2 uses half).
    #[arg(long, default_value_t = 3e-3)]
    pub lr: f64,
    /// Steps between checkpoints.
    #[arg(long, default_value_t = 25)]
    pub checkpoint_every: u64,
    /// Stage 2 free-text prompts.
    #[arg(long, default_value_t = 256)]
    pub free_text_prompts: usize,
    /// Stage 2 QA prompts (questions written by the target).
    #[arg(long, default_value_t = 128)]
    pub qa_prompts: usize,
    /// Passages besides the question's own in a QA prompt.
    #[arg(long, default_value_t = 3)]
    pub distractors: usize,
    /// Seeds initialisation, data order and sampled answers.
    #[arg(long, default_value_t = 17)]
    pub seed: u64,
    /// Stop after this many steps of this invocation (rerun to resume).
    #[arg(long)]
    pub stop_after: Option<u64>,
    /// Train the softmax over the whole vocabulary instead of the tokens that occur in the training text (slower
    /// by about vocabulary / tokens seen).
    #[arg(long)]
    pub full_vocab: bool,
    /// Sequences the target answers together while generating stage 2's data.
    #[arg(long, default_value_t = 8)]
    pub gen_batch: usize,
}

impl TrainArgs {
    fn stage(&self, name: &str, steps: u64, lr: f64) -> Option<StageConfig> {
        (steps > 0).then(|| StageConfig {
            name: name.into(),
            steps,
            batch_rows: self.batch,
            lr,
            warmup: (steps / 20).max(1),
            lr_floor: 0.1,
            clip: 1.0,
            adamw: AdamWConfig::default(),
            checkpoint_every: self.checkpoint_every,
            seed: self.seed,
            stop_after: self.stop_after,
            progress: true,
        })
    }
}

/// The storage flags of `what` (the store `--from-store` reads).
pub fn storage_flags(what: &DraftCommand) -> &crate::StorageFlags {
    let DraftCommand::Train(args) = what;
    &args.storage
}

/// Runs `engram draft ...`.
pub async fn run_draft(what: DraftCommand, config: &Config) -> Result<()> {
    let DraftCommand::Train(args) = what;
    let mut passages = read_text_files(&args.text)?;
    if args.from_store {
        passages.extend(store_passages(config).await?);
    }
    if passages.is_empty() {
        bail!("no training text: give --text FILE or --from-store with an ingested store");
    }
    let target = engram_engine::ModelFiles::load(&args.model)
        .with_context(|| format!("reading the target {}", args.model))?
        .config;
    let shape = match args.width {
        Some(w) => DraftShape::new(args.layers, w),
        None => DraftShape {
            layers: args.layers,
            ..DraftShape::for_target(&target)
        },
    };
    let plan = DraftPlan {
        shape,
        seed: args.seed,
        window: args.window,
        project_embedding: true,
        restrict_vocab: !args.full_vocab,
        pretrain: args.stage(PRETRAIN, args.pretrain_steps, args.lr),
        align: args.stage(ALIGN, args.align_steps, args.lr / 2.0),
    };
    let job = DraftJob {
        target: args.model.clone(),
        out: args.out.clone(),
        plan,
        prompts: PromptPlan {
            free_text: args.free_text_prompts,
            prefix_tokens: 32,
            continuation_tokens: 48,
            qa: args.qa_prompts,
            distractors: args.distractors,
            answer_tokens: 32,
            temperature: 0.7,
            seed: args.seed,
            prompt_weight: 0.1,
        },
        engine: EngineConfig {
            device: config.engine.device.clone(),
            max_sequences: args.gen_batch.max(1),
            kv_cache_mib: 1024,
            token_budget: 2048,
            ..EngineConfig::default()
        },
    };
    eprintln!("{} passages of training text", passages.len());
    let report = tokio::task::spawn_blocking(move || run(&job, &passages)).await??;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

/// Every passage in the configured store, `(title, text)`, in id order.
async fn store_passages(config: &Config) -> Result<Vec<(String, String)>> {
    let store = match &config.storage.database_url {
        Some(url) => Store::connect(url).await?,
        None => Store::open_sqlite(&config.storage.data_dir).await?,
    };
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let page = store.passages_after(after, 1000).await?;
        let Some(last) = page.last() else { break };
        after = last.id;
        out.extend(page.into_iter().map(|p| (p.title, p.text)));
    }
    store.close().await;
    Ok(out)
}
