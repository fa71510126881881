//! Search latency of the embedded qdrant-edge vector store.
//!
//! `cargo run --release --example vector_latency [-- POINTS [DIM [QUERIES [FLAGS]]]]` (defaults 100000 384 1000):
//! stores POINTS random unit vectors in a temporary directory, measures search latency (top-10, through the async
//! `VectorStore` API) on the plain segments, builds the HNSW index with `optimize`, measures again, and reports
//! recall@10 against brute force, then again after reopening with a few HNSW beam widths (`hnsw_ef`).
//!
//! FLAGS, comma-separated: `auto`: the store optimises in the background during the upserts (as the server does)
//! and the plain-segment measurement is skipped; `clustered`: vectors and queries are drawn around 1 000 random
//! centres (cosine about 0.5 within a cluster) instead of uniformly. Uniform random vectors in 384 dimensions have
//! no structure for HNSW to exploit (every point is about as far as any other), the worst case for its recall.

use engram::index::vectors::{EdgeOptions, EdgeVectorStore, VectorPoint, VectorStore};
use std::time::{Duration, Instant};

/// A tiny deterministic generator (Knuth's MMIX LCG).
struct Lcg(u64);

impl Lcg {
    fn unit(&mut self, dim: usize) -> Vec<f32> {
        let mut v: Vec<f32> = (0..dim)
            .map(|_| {
                self.0 = self
                    .0
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                (self.0 >> 33) as f32 / (1u64 << 31) as f32 * 2.0 - 1.0
            })
            .collect();
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.iter_mut().for_each(|x| *x /= norm);
        v
    }

    /// A unit vector near one of `centres` (the sum of the centre and a random unit vector, normalised).
    fn near(&mut self, centres: &[Vec<f32>]) -> Vec<f32> {
        let noise = self.unit(centres[0].len());
        let centre = &centres[(self.0 >> 40) as usize % centres.len()];
        let mut v: Vec<f32> = centre.iter().zip(noise).map(|(c, n)| c + n).collect();
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.iter_mut().for_each(|x| *x /= norm);
        v
    }
}

fn arg(i: usize, default: usize) -> usize {
    std::env::args()
        .nth(i)
        .map(|a| a.parse().expect("numeric argument"))
        .unwrap_or(default)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

async fn latencies(
    store: &EdgeVectorStore,
    queries: &[Vec<f32>],
) -> Result<Vec<Duration>, Box<dyn std::error::Error>> {
    for q in queries.iter().take(20) {
        store.search(q, 10).await?;
    }
    let mut times = Vec::with_capacity(queries.len());
    for q in queries {
        let started = Instant::now();
        let hits = store.search(q, 10).await?;
        times.push(started.elapsed());
        assert_eq!(hits.len(), 10);
    }
    times.sort();
    Ok(times)
}

fn report(label: &str, times: &[Duration]) {
    let mean = times.iter().sum::<Duration>() / times.len() as u32;
    println!(
        "{label}: {} searches, p50 {:.3} ms, p99 {:.3} ms, mean {:.3} ms, max {:.3} ms",
        times.len(),
        percentile(times, 0.50).as_secs_f64() * 1e3,
        percentile(times, 0.99).as_secs_f64() * 1e3,
        mean.as_secs_f64() * 1e3,
        times[times.len() - 1].as_secs_f64() * 1e3,
    );
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (n, dim, nq) = (arg(1, 100_000), arg(2, 384), arg(3, 1_000));
    let flags = std::env::args().nth(4).unwrap_or_default();
    let auto = flags.split(',').any(|f| f == "auto");
    let clustered = flags.split(',').any(|f| f == "clustered");
    let dir = tempfile::tempdir()?;
    let options = EdgeOptions {
        auto_optimize: auto,
        ..EdgeOptions::default()
    };
    let store = EdgeVectorStore::open_with(dir.path(), options.clone())?;
    store.ensure_collection(dim).await?;

    let mut rng = Lcg(42);
    let centres: Vec<Vec<f32>> = (0..1_000).map(|_| rng.unit(dim)).collect();
    let draw = |rng: &mut Lcg| {
        if clustered {
            rng.near(&centres)
        } else {
            rng.unit(dim)
        }
    };
    let vectors: Vec<Vec<f32>> = (0..n).map(|_| draw(&mut rng)).collect();
    let started = Instant::now();
    let ingest_started = started;
    for (c, chunk) in vectors.chunks(256).enumerate() {
        let points: Vec<VectorPoint> = chunk
            .iter()
            .enumerate()
            .map(|(i, v)| VectorPoint {
                passage_id: (c * 256 + i) as i64,
                document_id: format!("doc-{}", (c * 256 + i) / 20),
                vector: v.clone(),
            })
            .collect();
        store.upsert(&points).await?;
    }
    let upsert = started.elapsed();
    println!(
        "upserted {n} {} vectors of dimension {dim} in {:.1} s ({:.0} vectors/s, batches of 256, flushed each)",
        if clustered { "clustered" } else { "uniform" },
        upsert.as_secs_f64(),
        n as f64 / upsert.as_secs_f64()
    );

    let queries: Vec<Vec<f32>> = (0..nq).map(|_| draw(&mut rng)).collect();
    if auto {
        while store.is_optimizing() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        println!(
            "background optimisation done {:.1} s after the first upsert: {:?}",
            ingest_started.elapsed().as_secs_f64(),
            store.stats().await?
        );
    } else {
        let plain_queries = &queries[..nq.min(200)];
        report(
            "plain segments (brute force)",
            &latencies(&store, plain_queries).await?,
        );
    }

    let started = Instant::now();
    store.optimize().await?;
    println!(
        "optimize (HNSW build) took {:.1} s: {:?}",
        started.elapsed().as_secs_f64(),
        store.stats().await?
    );
    let recall_queries = &queries[..nq.min(100)];
    let exact: Vec<Vec<i64>> = recall_queries
        .iter()
        .map(|q| exact_top10(&vectors, q))
        .collect();
    report("HNSW (default ef)", &latencies(&store, &queries).await?);
    println!(
        "recall@10 against brute force over {} queries: {:.3}",
        recall_queries.len(),
        recall(&store, recall_queries, &exact).await?
    );

    let started = Instant::now();
    let one = vec![VectorPoint {
        passage_id: 0,
        document_id: "doc-0".into(),
        vector: rng.unit(dim),
    }];
    store.upsert(&one).await?;
    println!(
        "one upsert into the indexed store: {:.1} ms",
        started.elapsed().as_secs_f64() * 1e3
    );
    let started = Instant::now();
    store.delete_document("doc-1").await?;
    println!(
        "delete_document (20 points): {:.1} ms",
        started.elapsed().as_secs_f64() * 1e3
    );
    store.close().await?;

    for hnsw_ef in [None, Some(128), Some(256), Some(512)] {
        let started = Instant::now();
        let options = EdgeOptions {
            hnsw_ef,
            ..options.clone()
        };
        let store = EdgeVectorStore::open_with(dir.path(), options)?;
        let opened = started.elapsed();
        let times = latencies(&store, &queries).await?;
        let label = format!(
            "reopened in {:.0} ms, {} points, hnsw_ef {hnsw_ef:?}",
            opened.as_secs_f64() * 1e3,
            store.count().await?
        );
        report(&label, &times);
        println!(
            "  recall@10: {:.3}",
            recall(&store, recall_queries, &exact).await?
        );
        store.close().await?;
    }
    Ok(())
}

/// The ids of the 10 vectors nearest to `q` by exact cosine.
fn exact_top10(vectors: &[Vec<f32>], q: &[f32]) -> Vec<i64> {
    let mut scored: Vec<(usize, f32)> = vectors
        .iter()
        .enumerate()
        .map(|(i, v)| (i, v.iter().zip(q).map(|(a, b)| a * b).sum()))
        .collect();
    scored.select_nth_unstable_by(9, |a, b| b.1.total_cmp(&a.1));
    scored[..10].iter().map(|(i, _)| *i as i64).collect()
}

/// Mean recall@10 of the store against the exact top-10s.
async fn recall(
    store: &EdgeVectorStore,
    queries: &[Vec<f32>],
    exact: &[Vec<i64>],
) -> Result<f64, Box<dyn std::error::Error>> {
    let mut found = 0;
    for (q, truth) in queries.iter().zip(exact) {
        let hits = store.search(q, 10).await?;
        found += hits.iter().filter(|h| truth.contains(&h.0)).count();
    }
    Ok(found as f64 / (queries.len() * 10) as f64)
}
