//! The `engram` command: serve, ingest, reindex, eval.

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use engram::app::App;
use engram::config::Config;
use engram::eval;
use engram::ingest::document::NewDocument;
use engram::ingest::loaders;
use figment::providers::Serialized;
use figment::Figment;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

#[derive(Parser, Debug)]
#[command(
    name = "engram",
    version,
    about = "Retrieval-augmented multi-hop question answering server"
)]
struct Cli {
    /// TOML configuration file (default: ./engram.toml if it exists).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

/// Flags that override storage settings; shared by every command.
#[derive(Args, Debug, Clone, Default)]
struct StorageFlags {
    /// Data directory (SQLite database and indexes).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// PostgreSQL URL; overrides DATABASE_URL and the config file.
    #[arg(long)]
    database_url: Option<String>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the HTTP server.
    Serve {
        #[command(flatten)]
        storage: StorageFlags,
        /// Address and port to listen on, e.g. 127.0.0.1:8080.
        #[arg(long)]
        bind: Option<String>,
        /// Require this API key on write endpoints.
        #[arg(long)]
        api_key: Option<String>,
        /// Log one JSON object per line.
        #[arg(long)]
        json_logs: bool,
        /// Generation model: a Hugging Face directory or `synthetic:NAME` (tiny, qwen2.5-0.5b, llama-3-8b).
        #[arg(long)]
        model: Option<String>,
        /// Where the model runs: auto, cpu, cuda or cuda:N.
        #[arg(long)]
        device: Option<String>,
    },
    /// Benchmark the inference engine (prefill or decode) on a model, as JSON and a table.
    Bench {
        #[command(subcommand)]
        what: BenchCommand,
    },
    /// Ingest files or directories (txt, md, html, pdf, json, jsonl) through the ingestion pipeline.
    Ingest {
        #[command(flatten)]
        storage: StorageFlags,
        /// Files or directories (searched recursively for supported files).
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Precomputed open-IE extractions (HippoRAG JSON) for the knowledge graph; passages it lacks use the
        /// configured extractor.
        #[arg(long)]
        openie: Option<PathBuf>,
    },
    /// Rebuild the BM25 index from the database.
    Reindex {
        #[command(flatten)]
        storage: StorageFlags,
    },
    /// Evaluate a retriever on a question set (MuSiQue or HotpotQA style).
    Eval {
        #[command(flatten)]
        storage: StorageFlags,
        /// Questions file.
        #[arg(long)]
        questions: PathBuf,
        /// Corpus file, ingested first (already-stored passages are kept).
        #[arg(long)]
        corpus: PathBuf,
        /// Precomputed open-IE extractions (HippoRAG JSON) for the knowledge graph; without it passages are
        /// extracted by the configured extractor (the non-LLM fallback when no model is set).
        #[arg(long)]
        openie: Option<PathBuf>,
        /// Retriever names, comma-separated (e.g. `bm25,dense,hybrid,hipporag,hipporag2`), or `all`.
        #[arg(long, default_value = "bm25")]
        retriever: String,
        /// Also answer every question from its top 5 passages (the configured generation model, or the
        /// extractive reader without one) and report exact match and F1 against the answer and its aliases.
        #[arg(long)]
        qa: bool,
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
enum BenchCommand {
    /// Prefill: the 64 long-tailed benchmark prompts (16-2,048 tokens, seed 42) prepacked, and long prompts.
    Prefill {
        #[command(flatten)]
        common: BenchFlags,
        /// Timed repetitions per configuration (median reported).
        #[arg(long, default_value_t = 5)]
        reps: usize,
    },
    /// Greedy decode at the given batch sizes after a prefill of 128-token prompts.
    Decode {
        #[command(flatten)]
        common: BenchFlags,
        /// Batch sizes, comma-separated.
        #[arg(long, default_value = "1,64")]
        batch: String,
        /// New tokens per sequence.
        #[arg(long, default_value_t = 128)]
        steps: usize,
        /// Prompt tokens per sequence.
        #[arg(long, default_value_t = 128)]
        prompt_len: usize,
        /// Also time every operation of 16 profiled steps (device events) and print the breakdown.
        #[arg(long)]
        profile: bool,
    },
    /// Speculative decoding through the engine, greedy, against plain decoding: an oracle that always agrees
    /// (replay), a copy of the target as draft, a disagreeing draft (adaptive switch on and off), prompt lookup.
    Speculative {
        #[command(flatten)]
        common: BenchFlags,
        /// A draft that disagrees with the target (same vocabulary).
        #[arg(long, default_value = "synthetic:llama-3.2-1b@7")]
        reject_draft: String,
        /// Sequences decoding together.
        #[arg(long, default_value_t = 1)]
        batch: usize,
        /// Prompt tokens per sequence.
        #[arg(long, default_value_t = 128)]
        prompt_len: usize,
        /// New tokens per sequence.
        #[arg(long, default_value_t = 128)]
        tokens: usize,
        /// Proposal lengths for the replay and copy-draft runs, comma-separated.
        #[arg(long, default_value = "2,4,8")]
        k: String,
        /// Skip the copy-draft runs (they hold two copies of the target).
        #[arg(long)]
        no_copy_draft: bool,
        /// Timed repetitions per run, after the warm-up (the median is reported).
        #[arg(long, default_value_t = 3)]
        reps: usize,
    },
    /// H2O heavy-hitter KV eviction against the full cache: KV memory, decode speed, and the KL divergence of the
    /// next-token distributions over the same (teacher-forced) tokens.
    H2o {
        #[command(flatten)]
        common: BenchFlags,
        /// Sequences decoding together.
        #[arg(long, default_value_t = 32)]
        sequences: usize,
        /// Prompt tokens per sequence.
        #[arg(long, default_value_t = 8192)]
        prompt_len: usize,
        /// Decode steps.
        #[arg(long, default_value_t = 256)]
        steps: usize,
        /// Heavy-hitter share of the prompt (one budget per value, paired with --recent).
        #[arg(long, default_value = "0.1")]
        heavy: String,
        /// Recent-window share of the prompt.
        #[arg(long, default_value = "0.1")]
        recent: String,
        /// Tokens over the budget tolerated before evicting (default: what serving uses).
        #[arg(long, default_value_t = engram::engine::runner::H2O_SLACK)]
        slack: usize,
        /// Prompt tokens per prefill pass.
        #[arg(long, default_value_t = 8192)]
        chunk: usize,
    },
    /// TextGenSHAP passage attribution (permutation Shapley): passages encoded once, against every coalition
    /// prompt scored alone (timed on a sample, scaled), and optionally the joint prepacked mode.
    Attribution {
        #[command(flatten)]
        common: BenchFlags,
        /// Passage counts, comma-separated.
        #[arg(long, default_value = "10,20")]
        passages: String,
        /// Tokens per passage.
        #[arg(long, default_value_t = 150)]
        passage_tokens: usize,
        /// Tokens before the passages (instruction and question).
        #[arg(long, default_value_t = 48)]
        prefix_tokens: usize,
        /// Tokens between the passages and the answer.
        #[arg(long, default_value_t = 8)]
        suffix_tokens: usize,
        /// Answer lengths in tokens, comma-separated (each measured with each passage count).
        #[arg(long, default_value = "32")]
        answer_tokens: String,
        /// Permutations (sampled in antithetic pairs).
        #[arg(long, default_value_t = 128)]
        permutations: usize,
        /// Coalition prompts timed one by one for the baseline (scaled to all coalitions).
        #[arg(long, default_value_t = 64)]
        baseline_sample: usize,
        /// Also time the joint mode (every coalition prompt, prepacked, shared prefix computed once).
        #[arg(long)]
        joint: bool,
        /// Tokens per forward pass.
        #[arg(long, default_value_t = 16384)]
        capacity: usize,
        /// KV cache size in MiB.
        #[arg(long, default_value_t = 16384)]
        kv_cache_mib: usize,
    },
}

#[derive(Args, Debug, Clone)]
struct BenchFlags {
    /// Model: a Hugging Face directory or `synthetic:NAME`.
    #[arg(long, default_value = "synthetic:llama-3-8b")]
    model: String,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    out: Option<PathBuf>,
}

fn load_config(
    cli_config: Option<&Path>,
    storage: &StorageFlags,
    extra: Figment,
) -> Result<Config> {
    let mut flags = extra;
    if let Some(dir) = &storage.data_dir {
        flags = flags.merge(Serialized::global("storage.data_dir", dir));
    }
    if let Some(url) = &storage.database_url {
        flags = flags.merge(Serialized::global("storage.database_url", url));
    }
    let env: Vec<(String, String)> = std::env::vars().collect();
    Ok(Config::load(cli_config, &env, flags)?)
}

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.log.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if config.log.json {
        builder.json().init();
    } else {
        builder.init();
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve {
            storage,
            bind,
            api_key,
            json_logs,
            model,
            device,
        } => {
            let mut extra = Figment::new();
            if let Some(device) = device {
                extra = extra.merge(Serialized::global("engine.device", device));
            }
            if let Some(bind) = bind {
                extra = extra.merge(Serialized::global("server.bind", bind));
            }
            if let Some(key) = api_key {
                extra = extra.merge(Serialized::global("server.api_key", key));
            }
            if json_logs {
                extra = extra.merge(Serialized::global("log.json", true));
            }
            if let Some(model) = model {
                extra = extra.merge(Serialized::global("engine.model", model));
            }
            let config = load_config(cli.config.as_deref(), &storage, extra)?;
            init_logging(&config);
            let addr = config.bind_addr();
            let app = App::open(config).await?;
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr}"))?;
            tracing::info!(%addr, "engram listening; open http://{addr}/");
            engram::server::serve(app, listener, CancellationToken::new()).await?;
            Ok(())
        }
        Command::Bench { what } => engram_bench::run(what),
        Command::Ingest {
            storage,
            paths,
            openie,
        } => {
            let config = load_config(cli.config.as_deref(), &storage, openie_flag(openie))?;
            init_logging_quiet(&config);
            let documents = load_paths(&paths)?;
            let app = App::open(config).await?;
            ingest_with_progress(&app, &documents).await?;
            app.store.close().await;
            Ok(())
        }
        Command::Reindex { storage } => {
            let config = load_config(cli.config.as_deref(), &storage, Figment::new())?;
            init_logging_quiet(&config);
            let app = App::open(config).await?;
            let n = app.pipeline.reindex_all().await?;
            eprintln!("reindexed {n} passages");
            app.store.close().await;
            Ok(())
        }
        Command::Eval {
            storage,
            questions,
            corpus,
            openie,
            retriever,
            qa,
            json,
        } => {
            let mut storage = storage;
            let _tmp;
            if storage.data_dir.is_none() {
                let dir =
                    tempfile::tempdir().context("cannot create a temporary data directory")?;
                storage.data_dir = Some(dir.path().to_path_buf());
                _tmp = dir;
            }
            let config = load_config(cli.config.as_deref(), &storage, openie_flag(openie))?;
            init_logging_quiet(&config);
            let (qs, style) = eval::load_questions(&questions)?;
            let docs = eval::load_corpus(&corpus)?;
            let app = App::open(config).await?;
            ingest_with_progress(&app, &docs).await?;
            let names: Vec<String> = if retriever == "all" {
                app.retrievers
                    .names()
                    .iter()
                    .map(|s| s.to_string())
                    .collect()
            } else {
                retriever.split(',').map(|s| s.trim().to_string()).collect()
            };
            let mut reports = Vec::new();
            for name in &names {
                let r = app.retrievers.get(name)?;
                let reader = qa.then(|| match &app.generator {
                    Some(g) => eval::Reader::Model(g.as_ref()),
                    None => eval::Reader::Extractive,
                });
                reports.push(eval::evaluate(&app.store, r.as_ref(), &qs, style, reader).await?);
            }
            if json {
                for report in &reports {
                    println!("{}", serde_json::to_string(report)?);
                }
            } else {
                if qa {
                    println!("| retriever | questions | R@2 | R@5 | mean latency (ms) | reader | EM | F1 |");
                    println!("|---|---:|---:|---:|---:|---|---:|---:|");
                } else {
                    println!("| retriever | questions | R@2 | R@5 | mean latency (ms) |");
                    println!("|---|---:|---:|---:|---:|");
                }
                for r in &reports {
                    let answers = match (&r.reader, r.exact_match, r.f1) {
                        (Some(reader), Some(em), Some(f1)) => {
                            format!(" {reader} | {em:.2} | {f1:.2} |")
                        }
                        _ => String::new(),
                    };
                    println!(
                        "| {} | {} | {:.2} | {:.2} | {:.2} |{answers}",
                        r.retriever, r.questions, r.recall_at_2, r.recall_at_5, r.mean_latency_ms
                    );
                }
            }
            app.store.close().await;
            Ok(())
        }
    }
}

/// The `--openie FILE` flag as a configuration override.
fn openie_flag(openie: Option<PathBuf>) -> Figment {
    match openie {
        Some(path) => Figment::new().merge(Serialized::global("graph.openie_file", path)),
        None => Figment::new(),
    }
}

fn init_logging_quiet(config: &Config) {
    let mut c = config.clone();
    if std::env::var_os("RUST_LOG").is_none() {
        c.log.level = "warn".into();
    }
    init_logging(&c);
}

/// Loads every supported file under `paths`; any bad file stops the command before anything is stored.
fn load_paths(paths: &[PathBuf]) -> Result<Vec<NewDocument>> {
    let mut files = Vec::new();
    for p in paths {
        collect_files(p, &mut files)?;
    }
    if files.is_empty() {
        bail!(
            "no supported files ({}) under the given paths",
            loaders::SUPPORTED_EXTENSIONS.join(", ")
        );
    }
    let mut documents = Vec::new();
    for f in files {
        let bytes = fs_err::read(&f)?;
        let name = f.display().to_string();
        documents.extend(
            loaders::load_file(&name, &bytes).with_context(|| format!("cannot ingest {name}"))?,
        );
    }
    Ok(documents)
}

fn collect_files(path: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let meta = fs_err::metadata(path)?;
    if meta.is_file() {
        out.push(path.to_path_buf());
    } else if meta.is_dir() {
        let mut entries: Vec<PathBuf> = fs_err::read_dir(path)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        entries.sort();
        for e in entries {
            let supported = e.extension().and_then(|x| x.to_str()).is_some_and(|x| {
                loaders::SUPPORTED_EXTENSIONS.contains(&x.to_ascii_lowercase().as_str())
            });
            if e.is_dir() || supported {
                collect_files(&e, out)?;
            }
        }
    }
    Ok(())
}

/// Runs one ingestion job in this process with a progress bar on stderr.
async fn ingest_with_progress(app: &Arc<App>, documents: &[NewDocument]) -> Result<()> {
    app.pipeline.index_pending().await?;
    let job = app.pipeline.submit(documents).await?;
    let bar = indicatif::ProgressBar::new(documents.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} ingesting [{bar:40}] {pos}/{len} documents ({per_sec}, eta {eta})",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    let started = std::time::Instant::now();
    let progress =
        |c: &engram::store::JobCounts| bar.set_position((c.done + c.duplicate + c.failed) as u64);
    app.pipeline
        .run_job(&job, &CancellationToken::new(), &progress)
        .await?;
    bar.finish_and_clear();
    let record = app.store.get_job(&job).await?.context("the job vanished")?;
    let c = record.counts;
    let (docs, passages) = app.store.counts().await?;
    eprintln!(
        "job {job}: {} new, {} unchanged, {} failed in {:.1}s; store holds {docs} documents, {passages} passages",
        c.done,
        c.duplicate,
        c.failed,
        started.elapsed().as_secs_f64()
    );
    for e in record.errors.iter().take(20) {
        eprintln!("  item {} ({}): {} {}", e.index, e.title, e.code, e.message);
    }
    Ok(())
}

/// `engram bench`: loads the model on the device and runs the benchmark.
mod engram_bench {
    use super::{BenchCommand, BenchFlags};
    use anyhow::{Context, Result};
    use engram::attribution::bench::{bench_attribution, AttributionBenchConfig};
    use engram::engine::backend::cpu::CpuBackend;
    use engram::engine::backend::Backend;
    use engram::engine::bench::{self, BenchError, DeviceProbe};
    use engram::engine::device::{self, DeviceSpec, Resolved};
    use engram::engine::h2o::{BudgetPart, KvBudget};
    use engram::engine::h2o_bench::{bench_h2o, H2oBenchConfig};
    use engram::engine::spec_bench::{bench_speculative, SpecBenchConfig};

    pub fn run(what: BenchCommand) -> Result<()> {
        tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
            )
            .with_writer(std::io::stderr)
            .init();
        let common = match &what {
            BenchCommand::Prefill { common, .. }
            | BenchCommand::Decode { common, .. }
            | BenchCommand::Speculative { common, .. }
            | BenchCommand::Attribution { common, .. }
            | BenchCommand::H2o { common, .. } => common.clone(),
        };
        let spec: DeviceSpec = common.device.parse()?;
        if let BenchCommand::Speculative { .. } = &what {
            return speculative(spec, &common, &what);
        }
        if let BenchCommand::Attribution { .. } = &what {
            return attribution(spec, &common, &what);
        }
        if let BenchCommand::H2o { .. } = &what {
            return h2o(spec, &common, &what);
        }
        match device::resolve(spec)? {
            Resolved::Cpu => on(CpuBackend, &common, &what),
            Resolved::Cuda(b) => on(*b, &common, &what),
        }
    }

    /// `engram bench speculative`: each run loads its own models, so it gets a backend maker.
    fn speculative(spec: DeviceSpec, common: &BenchFlags, what: &BenchCommand) -> Result<()> {
        let BenchCommand::Speculative {
            reject_draft,
            batch,
            prompt_len,
            tokens,
            k,
            no_copy_draft,
            reps,
            ..
        } = what
        else {
            unreachable!("called for the speculative benchmark only")
        };
        let cfg = SpecBenchConfig {
            model: common.model.clone(),
            reject_draft: reject_draft.clone(),
            batch: *batch,
            prompt_len: *prompt_len,
            tokens: *tokens,
            ks: usize_list(k, "--k")?,
            copy_draft: !no_copy_draft,
            reps: *reps,
        };
        let report = match device::resolve(spec)? {
            Resolved::Cpu => bench_speculative(&|| Ok(CpuBackend), &cfg)?,
            Resolved::Cuda(_) => bench_speculative(
                &|| match device::resolve(spec) {
                    Ok(Resolved::Cuda(b)) => Ok(*b),
                    Ok(Resolved::Cpu) => Err(BenchError::Setup("the CUDA device went away".into())),
                    Err(e) => Err(BenchError::Setup(e.to_string())),
                },
                &cfg,
            )?,
        };
        println!(
            "device {} | model {} | batch {} | prompt {} | {} new tokens | greedy",
            report.device, report.model, report.batch, report.prompt_len, report.tokens
        );
        println!("| run | s | tokens/s | vs plain | tokens per target step | acceptance | identical outputs | agreeing prefix |");
        println!("|---|---|---|---|---|---|---|---|");
        for r in &report.runs {
            println!(
                "| {} | {:.3} | {:.1} | {:.3} | {:.2} | {:.3} | {}/{} | {:.1} |",
                r.label,
                r.seconds,
                r.tokens_per_s,
                r.speedup,
                r.tokens_per_target_step,
                r.acceptance_rate,
                r.identical_outputs,
                report.batch,
                r.agreeing_prefix
            );
        }
        if let Some(out) = &common.out {
            std::fs::write(out, serde_json::to_string_pretty(&report)?)
                .with_context(|| format!("writing {}", out.display()))?;
        }
        Ok(())
    }

    /// `engram bench h2o`.
    fn h2o(spec: DeviceSpec, common: &BenchFlags, what: &BenchCommand) -> Result<()> {
        let BenchCommand::H2o {
            sequences,
            prompt_len,
            steps,
            heavy,
            recent,
            slack,
            chunk,
            ..
        } = what
        else {
            unreachable!("called for the H2O benchmark only")
        };
        let ratios = |v: &str, flag: &str| -> Result<Vec<f64>> {
            v.split(',')
                .map(|x| x.trim().parse::<f64>())
                .collect::<Result<_, _>>()
                .with_context(|| format!("{flag} must be comma-separated numbers"))
        };
        let (heavy, recent) = (ratios(heavy, "--heavy")?, ratios(recent, "--recent")?);
        anyhow::ensure!(
            heavy.len() == recent.len(),
            "--heavy and --recent need as many values"
        );
        let budgets: Vec<KvBudget> = heavy
            .iter()
            .zip(&recent)
            .map(|(&h, &r)| KvBudget {
                heavy: BudgetPart::Ratio(h),
                recent: BudgetPart::Ratio(r),
            })
            .collect();
        for b in &budgets {
            b.validate().map_err(anyhow::Error::msg)?;
        }
        let cfg = H2oBenchConfig {
            model: common.model.clone(),
            sequences: *sequences,
            prompt_len: *prompt_len,
            steps: *steps,
            budgets,
            slack: *slack,
            chunk: *chunk,
        };
        let report = match device::resolve(spec)? {
            Resolved::Cpu => bench_h2o(CpuBackend, &cfg)?,
            Resolved::Cuda(b) => bench_h2o(*b, &cfg)?,
        };
        println!(
            "device {} | model {} | {} sequences | prompts of {} tokens | {} steps (teacher-forced on the full cache's tokens)",
            report.device, report.model, report.sequences, report.prompt_len, report.steps
        );
        println!("| run | KV after prefill (GB) | KV peak (GB) | tokens/s | step ms | KL mean | KL max | top-1 agreement |");
        println!("|---|---|---|---|---|---|---|---|");
        for r in &report.runs {
            println!(
                "| {} | {:.2} | {:.2} | {:.1} | {:.2} | {:.4} | {:.4} | {:.3} |",
                r.label,
                r.kv_bytes_after_prefill as f64 / 1e9,
                r.kv_bytes_peak as f64 / 1e9,
                r.tokens_per_s,
                r.step_ms_median,
                r.kl_mean,
                r.kl_max,
                r.top1_agreement
            );
        }
        for r in report.runs.iter().filter(|r| r.eviction.rounds > 0) {
            let e = &r.eviction;
            println!(
                "{}: {} eviction rounds ({} sequences): read {:.3} s, select {:.3} s, compact {:.3} s",
                r.label, e.rounds, e.sequences, e.read_s, e.select_s, e.compact_s
            );
        }
        if let Some(out) = &common.out {
            std::fs::write(out, serde_json::to_string_pretty(&report)?)
                .with_context(|| format!("writing {}", out.display()))?;
        }
        Ok(())
    }

    /// A flag's comma-separated integers.
    fn usize_list(value: &str, flag: &str) -> Result<Vec<usize>> {
        value
            .split(',')
            .map(|x| x.trim().parse::<usize>())
            .collect::<Result<_, _>>()
            .with_context(|| format!("{flag} must be comma-separated integers"))
    }

    /// `engram bench attribution`.
    fn attribution(spec: DeviceSpec, common: &BenchFlags, what: &BenchCommand) -> Result<()> {
        let BenchCommand::Attribution {
            passages,
            passage_tokens,
            prefix_tokens,
            suffix_tokens,
            answer_tokens,
            permutations,
            baseline_sample,
            joint,
            capacity,
            kv_cache_mib,
            ..
        } = what
        else {
            unreachable!("called for the attribution benchmark only")
        };
        let cfg = AttributionBenchConfig {
            model: common.model.clone(),
            passages: usize_list(passages, "--passages")?,
            passage_tokens: *passage_tokens,
            prefix_tokens: *prefix_tokens,
            suffix_tokens: *suffix_tokens,
            answer_tokens: usize_list(answer_tokens, "--answer-tokens")?,
            permutations: *permutations,
            baseline_sample: *baseline_sample,
            joint: *joint,
            capacity: *capacity,
            kv_cache_mib: *kv_cache_mib,
        };
        let report = match device::resolve(spec)? {
            Resolved::Cpu => bench_attribution(CpuBackend, &cfg)?,
            Resolved::Cuda(b) => bench_attribution(*b, &cfg)?,
        };
        println!(
            "device {} | model {} | passages of {} tokens | {} permutations",
            report.device, report.model, report.passage_tokens, report.permutations
        );
        println!("| passages | answer tokens | coalitions | run | s | forward passes | tokens computed | timed coalitions | measured s |");
        println!("|---|---|---|---|---|---|---|---|---|");
        for case in &report.cases {
            for r in &case.runs {
                println!(
                    "| {} | {} | {} | {} | {:.3} | {} | {} | {} | {:.3} |",
                    case.passages,
                    case.answer_tokens,
                    case.coalitions,
                    r.label,
                    r.seconds,
                    r.forward_passes,
                    r.computed_tokens,
                    r.timed_coalitions,
                    r.measured_seconds
                );
            }
            println!(
                "{} passages, {}-token answer: separate is {:.1}x faster than one by one",
                case.passages, case.answer_tokens, case.speedup_vs_one_by_one
            );
        }
        if let Some(out) = &common.out {
            std::fs::write(out, serde_json::to_string_pretty(&report)?)
                .with_context(|| format!("writing {}", out.display()))?;
        }
        Ok(())
    }

    fn on<B: Backend + DeviceProbe>(
        backend: B,
        common: &BenchFlags,
        what: &BenchCommand,
    ) -> Result<()> {
        let t = std::time::Instant::now();
        let (model, _, _) = bench::load_model(backend, &common.model)
            .with_context(|| format!("loading {}", common.model))?;
        model.backend().synchronize()?;
        eprintln!(
            "model {} loaded in {:.1} s on {}",
            common.model,
            t.elapsed().as_secs_f64(),
            model.backend().device()
        );
        let json = match what {
            BenchCommand::Prefill { reps, .. } => {
                let r = bench::bench_prefill(&model, &common.model, *reps)?;
                println!(
                    "device {} | model {} ({} params)",
                    r.device, r.model, r.params
                );
                if let (Some(g), Some(bw)) = (r.gemm_flops, r.copy_bytes_per_s) {
                    println!(
                        "measured ceilings: bf16 GEMM {:.0} TFLOP/s, copy {:.0} GB/s",
                        g / 1e12,
                        bw / 1e9
                    );
                }
                println!("| run | tokens | passes | median s | tokens/s | TFLOP/s | MFU (measured) | MFU (790) | peak GB |");
                println!("|---|---|---|---|---|---|---|---|---|");
                for x in &r.runs {
                    println!(
                        "| {} | {} | {} | {:.4} | {:.0} | {:.1} | {} | {:.3} | {} |",
                        x.label,
                        x.tokens,
                        x.passes,
                        x.seconds,
                        x.tokens_per_s,
                        x.tflops,
                        x.mfu_measured.map_or("-".into(), |m| format!("{m:.3}")),
                        x.mfu_reference,
                        x.peak_bytes
                            .map_or("-".into(), |b| format!("{:.2}", b as f64 / 1e9)),
                    );
                }
                serde_json::to_string_pretty(&r)?
            }
            BenchCommand::Decode {
                batch,
                steps,
                prompt_len,
                profile,
                ..
            } => {
                let batches: Vec<usize> = usize_list(batch, "--batch")?;
                let r = bench::bench_decode(
                    &model,
                    &common.model,
                    &batches,
                    *prompt_len,
                    *steps,
                    *profile,
                )?;
                println!("device {} | model {}", r.device, r.model);
                println!("| batch | decode tokens/s | step ms (median) | enqueue ms | end-to-end tokens/s | roofline tokens/s | fraction |");
                println!("|---|---|---|---|---|---|---|");
                for x in &r.runs {
                    println!(
                        "| {} | {:.1} | {:.3} | {:.3} | {:.1} | {} | {} |",
                        x.batch,
                        x.tokens_per_s,
                        x.step_ms_median,
                        x.enqueue_ms_median,
                        x.end_to_end_tokens_per_s,
                        x.roofline_tokens_per_s
                            .map_or("-".into(), |v| format!("{v:.1}")),
                        x.roofline_fraction
                            .map_or("-".into(), |v| format!("{v:.3}")),
                    );
                }
                for x in r.runs.iter().filter(|x| !x.profile.is_empty()) {
                    println!(
                        "profile, batch {} (device ms per step, calls per step):",
                        x.batch
                    );
                    for p in &x.profile {
                        println!(
                            "  {:>8.3} ms {:>6.1}x  {}",
                            p.ms_per_step, p.calls_per_step, p.op
                        );
                    }
                }
                serde_json::to_string_pretty(&r)?
            }
            BenchCommand::Speculative { .. }
            | BenchCommand::Attribution { .. }
            | BenchCommand::H2o { .. } => {
                unreachable!("the speculative, attribution and H2O benchmarks are run apart")
            }
        };
        if let Some(out) = &common.out {
            std::fs::write(out, json).with_context(|| format!("writing {}", out.display()))?;
        }
        Ok(())
    }
}
