//! Embedding throughput of [`BertEmbedder`] on this machine: the first N passages (default 500) of the MuSiQue
//! corpus, each `title + " " + text`, embedded in one call at batch size B (default 32), after a one-batch warm-up.
//!
//! Run: `cargo run --release --example embed_throughput [-- CORPUS.json [N [B]]]`. The model comes from
//! `ENGRAM_EMBED_MODEL_DIR` (default `models/all-MiniLM-L6-v2`, fetched by `make setup`); the corpus defaults to
//! `$ENGRAM_MUSIQUE_DIR/corpus.json` (default `../shared/data/musique`). Compare with the NumPy reference:
//! `python3 scripts/reference_embeddings.py --bench CORPUS.json --count N`.
#![allow(clippy::disallowed_methods)] // test and benchmark harnesses read their fixtures' locations from the environment

use std::path::PathBuf;
use std::time::Instant;

use engram::embed::{BertEmbedder, Embedder};

#[derive(serde::Deserialize)]
struct Passage {
    title: String,
    text: String,
}

/// User + system CPU seconds of this process so far (Linux; 0 elsewhere), to show how many cores were busy.
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the command name (which is in parentheses): utime and stime are the 12th and 13th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut args = std::env::args().skip(1);
    let corpus = args.next().map(PathBuf::from).unwrap_or_else(|| {
        std::env::var_os("ENGRAM_MUSIQUE_DIR")
            .map_or_else(|| root.join("../shared/data/musique"), PathBuf::from)
            .join("corpus.json")
    });
    let count: usize = args.next().map_or(Ok(500), |v| v.parse())?;
    let batch: usize = args.next().map_or(Ok(32), |v| v.parse())?;
    let model_dir = std::env::var_os("ENGRAM_EMBED_MODEL_DIR").map_or_else(
        || root.join(engram::embed::DEFAULT_MODEL_DIR),
        PathBuf::from,
    );

    let passages: Vec<Passage> = serde_json::from_str(&std::fs::read_to_string(&corpus)?)?;
    let texts: Vec<String> = passages
        .iter()
        .take(count)
        .map(|p| format!("{} {}", p.title, p.text))
        .collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();

    let started = Instant::now();
    let embedder = BertEmbedder::load(&model_dir, batch)?;
    println!(
        "loaded {} from {} in {:.2} s",
        embedder.model_name(),
        model_dir.display(),
        started.elapsed().as_secs_f64()
    );
    println!(
        "cores: {}; candle matmul threads: {} (RAYON_NUM_THREADS={})",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        candle_core::utils::get_num_threads(),
        std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "unset".to_owned())
    );

    embedder.embed(&refs[..refs.len().min(batch)])?; // warm-up
    let (cpu0, t0) = (cpu_seconds(), Instant::now());
    let out = embedder.embed(&refs)?;
    let (secs, cpu) = (t0.elapsed().as_secs_f64(), cpu_seconds() - cpu0);
    let tokens: usize = out.iter().map(|e| e.tokens).sum();
    let truncated = out.iter().filter(|e| e.truncated).count();
    println!(
        "candle BertEmbedder: {} passages ({tokens} tokens, {truncated} truncated at {}), batch {batch}: \
         {secs:.2} s, {:.1} passages/s, {:.0} tokens/s, {:.2} cores busy on average",
        out.len(),
        embedder.max_tokens(),
        out.len() as f64 / secs,
        tokens as f64 / secs,
        cpu / secs
    );
    Ok(())
}
