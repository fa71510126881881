//! Knowledge-graph benchmark on the MuSiQue corpus with the GPT-3.5 triples: ingestion with extraction import,
//! phrase and fact embedding and synonym search; graph load time from the store and snapshot build time; memory;
//! Personalized PageRank per query on the phrase graph (HippoRAG v1) and the full graph (HippoRAG 2); end-to-end
//! retrieval latency per method.
//!
//! Run: `cargo bench --bench graph` (model from `make setup`; MuSiQue from `ENGRAM_MUSIQUE_DIR`, default
//! `../shared/data/musique`). With `-- --no-embed` the graph has no synonym edges (and no hipporag2).
#![allow(clippy::disallowed_methods)] // test and benchmark harnesses read their fixtures' locations from the environment

use engram::app::App;
use engram::config::Config;
use engram::eval::{load_corpus, load_questions};
use engram::graph::ppr::{personalized_pagerank, PprConfig};
use engram::graph::KnowledgeGraph;
use std::path::PathBuf;
use std::time::Instant;
use tokio_util::sync::CancellationToken;

fn musique_dir() -> PathBuf {
    std::env::var("ENGRAM_MUSIQUE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data/musique")
        })
}

fn percentiles(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    let at = |p: f64| v[(((v.len() - 1) as f64) * p).round() as usize];
    (at(0.5), at(0.99), v.iter().sum::<f64>() / v.len() as f64)
}

fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    if !std::env::args().any(|a| a == "--bench") {
        // `cargo test --all-targets` runs bench binaries without `--bench`: they only need to build there.
        println!("not run: benchmarks run under `cargo bench`");
        return Ok(());
    }
    let embed = !std::env::args().any(|a| a == "--no-embed");
    let dir = musique_dir();
    if !dir.join("corpus.json").exists() {
        println!(
            "MuSiQue data not found at {} (set ENGRAM_MUSIQUE_DIR); skipping",
            dir.display()
        );
        return Ok(());
    }
    let data = tempfile::tempdir()?;
    let mut config = Config::default();
    config.storage.data_dir = data.path().to_path_buf();
    config.embedding.enabled = embed;
    config.embedding.model_dir =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/all-MiniLM-L6-v2");
    config.graph.openie_file = Some(dir.join("openie_gpt-3.5-turbo-1106.json"));
    let app = App::open(config).await?;
    let docs = load_corpus(&dir.join("corpus.json"))?;
    let (questions, _) = load_questions(&dir.join("questions.json"))?;

    let started = Instant::now();
    let job = app.pipeline.submit(&docs).await?;
    app.pipeline
        .run_job(&job, &CancellationToken::new(), &|_| {})
        .await?;
    println!(
        "ingest    {} documents with extraction import{} in {:.1} s",
        docs.len(),
        if embed {
            ", passage/phrase/fact embedding and synonym search"
        } else {
            ""
        },
        started.elapsed().as_secs_f64()
    );

    let graph = app.graph.as_ref().expect("graph enabled");
    let rss_before = rss_mib();
    let started = Instant::now();
    let rows = app.store.graph_rows().await?;
    let read = started.elapsed();
    let mut g = KnowledgeGraph::from_rows(rows);
    let built = started.elapsed();
    let snap = g.snapshot();
    let total = started.elapsed();
    let stats = g.stats();
    println!(
        "graph     {} phrases, {} passages, {} relation / {} synonym / {} context edges",
        stats.phrases,
        stats.passages,
        stats.relation_edges,
        stats.synonym_edges,
        stats.context_edges
    );
    println!(
        "load      rows from the store {:.0} ms, petgraph build {:.0} ms, CSR snapshot {:.0} ms, total {:.0} ms",
        read.as_secs_f64() * 1e3,
        (built - read).as_secs_f64() * 1e3,
        (total - built).as_secs_f64() * 1e3,
        total.as_secs_f64() * 1e3
    );
    println!(
        "memory    snapshot {:.1} MiB (CSR phrase graph {:.1} MiB, full graph {:.1} MiB); process RSS +{:.1} MiB for one more graph",
        snap.memory_bytes() as f64 / 1048576.0,
        snap.phrase_graph.memory_bytes() as f64 / 1048576.0,
        snap.full_graph.memory_bytes() as f64 / 1048576.0,
        rss_mib() - rss_before
    );
    drop(g);

    // Seeds as the retrievers make them: the phrases `hipporag` links from each question.
    let v1 = app.retrievers.get("hipporag")?;
    let snap = graph.snapshot();
    let cfg = PprConfig {
        damping: graph.config().damping,
        tolerance: graph.config().tolerance,
        ..PprConfig::default()
    };
    let mut seeds_per_question = Vec::new();
    for q in &questions {
        let found = v1.retrieve_explained(&q.question, 5).await?;
        let g = graph.read();
        let reset: Vec<(u32, f64)> = found
            .seeds
            .iter()
            .filter_map(|s| g.phrase_by_text(&s.phrase))
            .filter_map(|id| snap.phrase_index.get(&id).map(|&n| (n, 1.0)))
            .collect();
        seeds_per_question.push(reset);
    }
    let linked = seeds_per_question.iter().filter(|r| !r.is_empty()).count();
    for (label, csr, with_passages) in [
        ("phrase graph (hipporag)", &snap.phrase_graph, false),
        ("full graph (hipporag2)", &snap.full_graph, true),
    ] {
        let mut times = Vec::new();
        let mut iterations = 0;
        for reset in seeds_per_question.iter().filter(|r| !r.is_empty()) {
            let mut reset = reset.clone();
            if with_passages {
                let np = snap.phrase_ids.len() as u32;
                reset.extend(
                    (0..snap.passage_ids.len() as u32).map(|i| (np + i, 0.05 / (1.0 + i as f64))),
                );
            }
            let t = Instant::now();
            let r = personalized_pagerank(csr, &reset, &cfg);
            times.push(t.elapsed().as_secs_f64() * 1e3);
            iterations += r.iterations;
        }
        let n = times.len();
        let (p50, p99, mean) = percentiles(times);
        println!(
            "ppr       {label:<24} {} nodes {} directed edges, {n} queries: p50 {p50:.3} ms p99 {p99:.3} ms mean {mean:.3} ms, {:.1} iterations on average (tolerance {:e})",
            csr.nodes(),
            csr.edges(),
            iterations as f64 / n as f64,
            cfg.tolerance
        );
    }
    println!(
        "          ({linked} of {} questions linked at least one phrase)",
        questions.len()
    );

    for name in app.retrievers.names() {
        let r = app.retrievers.get(name)?;
        let mut times = Vec::new();
        for q in &questions {
            let t = Instant::now();
            std::hint::black_box(r.retrieve(&q.question, 5).await?);
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
        let (p50, p99, mean) = percentiles(times);
        println!("retrieve  {name:<10} top-5 over {} questions: p50 {p50:.2} ms p99 {p99:.2} ms mean {mean:.2} ms", questions.len());
    }
    app.store.close().await;
    Ok(())
}
