//! The `engram` command: serve, ingest, reindex, eval.

mod bench;
mod draft_cli;
mod eval_attribution;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use engram::app::App;
use engram::config::Config;
use engram::eval;
use engram::ingest::loaders;
use engram::store::NewDocument;
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

/// Flags that choose the generation model; shared by serve, ingest and eval.
#[derive(Args, Debug, Clone, Default)]
struct ModelFlags {
    /// Generation model: a GGUF file (or a directory holding one; `scripts/fetch-model.sh NAME` fetches them),
    /// a Hugging Face directory, or `synthetic:NAME` (tiny, qwen2.5-0.5b, llama-3-8b).
    #[arg(long)]
    model: Option<String>,
    /// Where the model runs: auto, cpu, cuda or cuda:N.
    #[arg(long)]
    device: Option<String>,
}

impl ModelFlags {
    /// The flags as configuration overrides on top of `extra`.
    fn merge_into(&self, mut extra: Figment) -> Figment {
        if let Some(model) = &self.model {
            extra = extra.merge(Serialized::global("engine.model", model));
        }
        if let Some(device) = &self.device {
            extra = extra.merge(Serialized::global("engine.device", device));
        }
        extra
    }
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
        #[command(flatten)]
        model: ModelFlags,
    },
    /// Benchmark the inference engine (prefill or decode) on a model, as JSON and a table.
    Bench {
        #[command(subcommand)]
        what: bench::BenchCommand,
    },
    /// Build models for the server: `engram draft train` trains a speculative-decoding draft for a target.
    Draft {
        #[command(subcommand)]
        what: draft_cli::DraftCommand,
    },
    /// Ingest files or directories (txt, md, html, pdf, json, jsonl) through the ingestion pipeline.
    Ingest {
        #[command(flatten)]
        storage: StorageFlags,
        #[command(flatten)]
        model: ModelFlags,
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
        #[command(flatten)]
        model: ModelFlags,
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
        /// Instead of retrieval and answers, score the passage-attribution methods (Shapley over joint and
        /// separate prompts, ContextCite, leave-one-out, retrieval order, random) on the model's answers from the
        /// top 5 passages: top-k log-probability drops and the linear datamodeling score. Needs a model.
        #[arg(long, conflicts_with = "qa")]
        attribution: bool,
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
        /// Also write each question's outcome (retriever, question, answers, recall@5, prediction, EM, F1) to
        /// this file, one JSON object per line.
        #[arg(long)]
        predictions: Option<PathBuf>,
    },
}

#[allow(clippy::disallowed_methods)] // the environment is one of the configuration's layers
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
    let config_file = cli.config.as_deref();
    match cli.command {
        Command::Serve {
            storage,
            bind,
            api_key,
            json_logs,
            model,
        } => {
            let flags = ServeFlags {
                bind,
                api_key,
                json_logs,
                model,
            };
            serve(config_file, &storage, flags).await
        }
        Command::Bench { what } => {
            // The benchmarks read the CUDA knobs through the same layers as the server (`[engine.cuda]`).
            let config = load_config(config_file, &StorageFlags::default(), Figment::new())?;
            bench::run(what, &config.engine.cuda)
        }
        Command::Draft { what } => {
            let config = load_config(config_file, draft_cli::storage_flags(&what), Figment::new())?;
            init_logging(&config);
            draft_cli::run_draft(what, &config).await
        }
        Command::Ingest {
            storage,
            model,
            paths,
            openie,
        } => {
            let config = load_config(config_file, &storage, model.merge_into(openie_flag(openie)))?;
            init_logging_quiet(&config);
            let limits = loaders::LoadLimits {
                max_nesting_depth: config.limits.max_nesting_depth,
            };
            let documents = load_paths(&paths, limits)?;
            let app = App::open(config).await?;
            ingest_with_progress(&app, &documents).await?;
            app.store.close().await;
            Ok(())
        }
        Command::Reindex { storage } => {
            let config = load_config(config_file, &storage, Figment::new())?;
            init_logging_quiet(&config);
            let app = App::open(config).await?;
            let n = app.pipeline.reindex_all().await?;
            eprintln!("reindexed {n} passages");
            app.store.close().await;
            Ok(())
        }
        Command::Eval {
            storage,
            model,
            questions,
            corpus,
            openie,
            retriever,
            qa,
            attribution,
            json,
            predictions,
        } => {
            let flags = EvalFlags {
                model,
                questions,
                corpus,
                openie,
                retriever,
                qa,
                attribution,
                json,
                predictions,
            };
            run_eval(config_file, storage, flags).await
        }
    }
}

/// `engram serve`'s flags beyond storage.
struct ServeFlags {
    bind: Option<String>,
    api_key: Option<String>,
    json_logs: bool,
    model: ModelFlags,
}

/// `engram serve`: the configuration with the flags on top, the app, the HTTP server until a signal.
async fn serve(
    config_file: Option<&Path>,
    storage: &StorageFlags,
    flags: ServeFlags,
) -> Result<()> {
    let mut extra = flags.model.merge_into(Figment::new());
    if let Some(bind) = flags.bind {
        extra = extra.merge(Serialized::global("server.bind", bind));
    }
    if let Some(key) = flags.api_key {
        extra = extra.merge(Serialized::global("server.api_key", key));
    }
    if flags.json_logs {
        extra = extra.merge(Serialized::global("log.json", true));
    }
    let config = load_config(config_file, storage, extra)?;
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

/// `engram eval`'s flags beyond storage.
struct EvalFlags {
    model: ModelFlags,
    questions: PathBuf,
    corpus: PathBuf,
    openie: Option<PathBuf>,
    retriever: String,
    qa: bool,
    attribution: bool,
    json: bool,
    predictions: Option<PathBuf>,
}

/// `engram eval`: ingests the corpus (into a temporary data directory unless one is given), evaluates each
/// retriever, prints the reports.
async fn run_eval(
    config_file: Option<&Path>,
    mut storage: StorageFlags,
    flags: EvalFlags,
) -> Result<()> {
    let _tmp;
    if storage.data_dir.is_none() {
        let dir = tempfile::tempdir().context("cannot create a temporary data directory")?;
        storage.data_dir = Some(dir.path().to_path_buf());
        _tmp = dir;
    }
    let extra = flags.model.merge_into(openie_flag(flags.openie));
    let config = load_config(config_file, &storage, extra)?;
    init_logging_quiet(&config);
    let (qs, style) = eval::load_questions(&flags.questions)?;
    let docs = eval::load_corpus(&flags.corpus)?;
    let app = App::open(config).await?;
    ingest_with_progress(&app, &docs).await?;
    let names: Vec<String> = if flags.retriever == "all" {
        app.retrievers
            .names()
            .iter()
            .map(|s| s.to_string())
            .collect()
    } else {
        flags
            .retriever
            .split(',')
            .map(|s| s.trim().to_string())
            .collect()
    };
    if flags.attribution {
        eval_attribution::run(&app, &names, &qs, flags.json, flags.predictions.as_deref()).await?;
        app.store.close().await;
        return Ok(());
    }
    let mut reports = Vec::new();
    for name in &names {
        let r = app.retrievers.get(name)?;
        let reader = flags
            .qa
            .then(|| engram::qa::Answerer::new(app.generator.clone()));
        reports.push(eval::evaluate(&app.store, r.as_ref(), &qs, style, reader).await?);
    }
    if let Some(path) = &flags.predictions {
        write_predictions(path, &reports)?;
    }
    if flags.json {
        for report in &reports {
            println!("{}", serde_json::to_string(report)?);
        }
    } else {
        print_eval_table(&reports, flags.qa);
    }
    app.store.close().await;
    Ok(())
}

/// Each report's per-question outcomes as JSON lines, with the retriever's name.
fn write_predictions(path: &Path, reports: &[eval::EvalReport]) -> Result<()> {
    let mut out = String::new();
    for report in reports {
        for outcome in &report.per_question {
            let mut line = serde_json::to_value(outcome)?;
            line["retriever"] = report.retriever.clone().into();
            out.push_str(&serde_json::to_string(&line)?);
            out.push('\n');
        }
    }
    fs_err::write(path, out)?;
    Ok(())
}

/// The eval reports as a Markdown table.
fn print_eval_table(reports: &[eval::EvalReport], qa: bool) {
    if qa {
        println!("| retriever | questions | R@2 | R@5 | mean latency (ms) | reader | EM | F1 | over context |");
        println!("|---|---:|---:|---:|---:|---|---:|---:|---:|");
    } else {
        println!("| retriever | questions | R@2 | R@5 | mean latency (ms) |");
        println!("|---|---:|---:|---:|---:|");
    }
    for r in reports {
        let answers = match (&r.reader, r.exact_match, r.f1) {
            (Some(reader), Some(em), Some(f1)) => {
                format!(
                    " {reader} | {em:.2} | {f1:.2} | {} |",
                    r.over_context.unwrap_or(0)
                )
            }
            _ => String::new(),
        };
        println!(
            "| {} | {} | {:.2} | {:.2} | {:.2} |{answers}",
            r.retriever, r.questions, r.recall_at_2, r.recall_at_5, r.mean_latency_ms
        );
    }
}

/// The `--openie FILE` flag as a configuration override.
fn openie_flag(openie: Option<PathBuf>) -> Figment {
    match openie {
        Some(path) => Figment::new().merge(Serialized::global("graph.openie_file", path)),
        None => Figment::new(),
    }
}

#[allow(clippy::disallowed_methods)] // RUST_LOG, as tracing itself reads it
fn init_logging_quiet(config: &Config) {
    let mut c = config.clone();
    if std::env::var_os("RUST_LOG").is_none() {
        c.log.level = "warn".into();
    }
    init_logging(&c);
}

/// Loads every supported file under `paths` within `limits` (`[limits]` of the config, as the server does); any
/// bad file stops the command before anything is stored.
fn load_paths(paths: &[PathBuf], limits: loaders::LoadLimits) -> Result<Vec<NewDocument>> {
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
            loaders::load_file_with(&name, &bytes, &limits)
                .with_context(|| format!("cannot ingest {name}"))?,
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
