//! Dense retrieval benchmark on this machine: embedding throughput (all-MiniLM-L6-v2 on candle) against the numpy
//! reference implementation of the same forward pass, and vector search latency in the embedded qdrant-edge store
//! with the 1,890 MuSiQue passages and with 100,000 synthetic vectors, against exact brute-force search.
//!
//! Run: `cargo bench --bench dense` (model from `make setup`; MuSiQue from `ENGRAM_MUSIQUE_DIR`, default
//! `../shared/data/musique`). The numpy baseline runs when python3 has numpy, safetensors and tokenizers.
#![allow(clippy::disallowed_methods)] // test and benchmark harnesses read their fixtures' locations from the environment

use engram::embed::{BertEmbedder, Embedder};
use engram::eval::{load_corpus, load_questions};
use engram::index::vectors::{EdgeVectorStore, VectorPoint, VectorStore};
use std::path::PathBuf;
use std::time::Instant;

const DIM: usize = 384;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn percentiles(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    let at = |p: f64| v[(((v.len() - 1) as f64) * p).round() as usize];
    (at(0.5), at(0.99), v.iter().sum::<f64>() / v.len() as f64)
}

/// A small deterministic generator (no extra crates).
struct Lcg(u64);
impl Lcg {
    fn next_f32(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    fn unit_vector(&mut self) -> Vec<f32> {
        let v: Vec<f32> = (0..DIM).map(|_| self.next_f32()).collect();
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.into_iter().map(|x| x / n).collect()
    }
}

fn brute_force(all: &[Vec<f32>], q: &[f32], k: usize) -> Vec<usize> {
    let mut scored: Vec<(usize, f32)> = all
        .iter()
        .enumerate()
        .map(|(i, v)| (i, v.iter().zip(q).map(|(a, b)| a * b).sum()))
        .collect();
    scored.sort_by(|a, b| b.1.total_cmp(&a.1));
    scored.into_iter().take(k).map(|s| s.0).collect()
}

async fn latency(store: &EdgeVectorStore, all: &[Vec<f32>], queries: &[Vec<f32>], label: &str) {
    let mut lat = Vec::new();
    let mut recall = 0.0;
    for q in queries {
        let t = Instant::now();
        let hits = store.search(q, 10).await.unwrap();
        lat.push(t.elapsed().as_secs_f64() * 1000.0);
        let exact = brute_force(all, q, 10);
        recall += hits
            .iter()
            .filter(|h| exact.contains(&(h.0 as usize)))
            .count() as f64
            / 10.0;
    }
    let mut brute = Vec::new();
    for q in queries {
        let t = Instant::now();
        std::hint::black_box(brute_force(all, q, 10));
        brute.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let (p50, p99, mean) = percentiles(lat);
    let (b50, b99, bmean) = percentiles(brute);
    println!(
        "search    {label:<22} n={} top-10  qdrant-edge p50 {p50:.3} ms p99 {p99:.3} ms mean {mean:.3} ms | brute force p50 {b50:.3} ms p99 {b99:.3} ms | speed-up {:.1}x (mean) | recall@10 vs exact {:.3}",
        queries.len(),
        bmean / mean,
        recall / queries.len() as f64
    );
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        // `cargo test --all-targets` runs bench binaries without `--bench`: they only need to build there.
        println!("not run: benchmarks run under `cargo bench`");
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run());
}

async fn run() {
    let musique = std::env::var("ENGRAM_MUSIQUE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root().join("../shared/data/musique"));
    let model_dir = std::env::var("ENGRAM_EMBED_MODEL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root().join("models/all-MiniLM-L6-v2"));
    let embedder = BertEmbedder::load(&model_dir, 32).expect("model (run make setup)");
    let docs = load_corpus(&musique.join("corpus.json")).unwrap();
    let (questions, _) = load_questions(&musique.join("questions.json")).unwrap();
    println!(
        "machine: {} logical CPUs",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );

    // Embedding throughput over the first 500 passages, batch 32.
    let texts: Vec<String> = docs
        .iter()
        .take(500)
        .map(|d| format!("{}\n{}", d.title, d.text))
        .collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    embedder.embed(&refs[..32]).unwrap(); // warm-up
    let t = Instant::now();
    embedder.embed(&refs).unwrap();
    let secs = t.elapsed().as_secs_f64();
    println!(
        "embed     candle (engram)        {} passages in {secs:.2}s = {:.1} passages/s",
        refs.len(),
        refs.len() as f64 / secs
    );
    let script = root().join("scripts/reference_embeddings.py");
    match std::process::Command::new("python3")
        .arg(&script)
        .args([
            "--bench",
            &musique.join("corpus.json").display().to_string(),
            "--count",
            "500",
            "--model-dir",
        ])
        .arg(&model_dir)
        .output()
    {
        Ok(out) if out.status.success() => {
            let line = String::from_utf8_lossy(&out.stdout);
            let rate: Option<f64> = line.split_whitespace().find_map(|w| {
                w.strip_prefix("passages_per_s=")
                    .and_then(|v| v.parse().ok())
            });
            match rate {
                Some(r) => println!(
                    "embed     numpy reference         {r:.1} passages/s | engram is {:.2}x the reference",
                    (refs.len() as f64 / secs) / r
                ),
                None => println!("embed     numpy reference         unparsed output: {line}"),
            }
        }
        Ok(out) => println!(
            "embed     numpy reference did not run: {}",
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or("")
        ),
        Err(e) => println!("embed     numpy reference did not run: {e}"),
    }

    // The 1,890 MuSiQue passages, queried with the 100 questions.
    let all_texts: Vec<String> = docs
        .iter()
        .map(|d| format!("{}\n{}", d.title, d.text))
        .collect();
    let all_refs: Vec<&str> = all_texts.iter().map(String::as_str).collect();
    let vectors: Vec<Vec<f32>> = embedder
        .embed(&all_refs)
        .unwrap()
        .into_iter()
        .map(|e| e.vector)
        .collect();
    let qtexts: Vec<&str> = questions.iter().map(|q| q.question.as_str()).collect();
    let queries: Vec<Vec<f32>> = embedder
        .embed(&qtexts)
        .unwrap()
        .into_iter()
        .map(|e| e.vector)
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let store = EdgeVectorStore::open(dir.path()).unwrap();
    store.ensure_collection(DIM).await.unwrap();
    let points: Vec<VectorPoint> = vectors
        .iter()
        .enumerate()
        .map(|(i, v)| VectorPoint {
            passage_id: i as i64,
            document_id: format!("d{i}"),
            vector: v.clone(),
        })
        .collect();
    store.upsert(&points).await.unwrap();
    latency(&store, &vectors, &queries, "MuSiQue 1,890").await;

    // 100,000 synthetic unit vectors.
    let mut rng = Lcg(42);
    let synthetic: Vec<Vec<f32>> = (0..100_000).map(|_| rng.unit_vector()).collect();
    let dir = tempfile::tempdir().unwrap();
    let store = EdgeVectorStore::open(dir.path()).unwrap();
    store.ensure_collection(DIM).await.unwrap();
    let t = Instant::now();
    for (c, chunk) in synthetic.chunks(5_000).enumerate() {
        let points: Vec<VectorPoint> = chunk
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let id = c * 5_000 + i;
                VectorPoint {
                    passage_id: id as i64,
                    document_id: format!("d{}", id / 10),
                    vector: v.clone(),
                }
            })
            .collect();
        store.upsert(&points).await.unwrap();
    }
    println!(
        "upsert    synthetic 100,000      in {:.1}s",
        t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    store.optimize().await.unwrap();
    println!(
        "optimize  synthetic 100,000      in {:.1}s (index build)",
        t.elapsed().as_secs_f64()
    );
    let queries: Vec<Vec<f32>> = (0..200).map(|_| rng.unit_vector()).collect();
    latency(&store, &synthetic, &queries, "synthetic 100,000").await;
}
