//! Foundation benchmark: ingestion throughput on SQLite and PostgreSQL, and BM25 retrieve latency over HTTP, on the
//! MuSiQue corpus (`ENGRAM_MUSIQUE_DIR`, default `../shared/data/musique`). Baselines measured in the same run:
//! indexing the same passages into tantivy alone, and searching the index in-process.
//!
//! Run: `cargo bench --bench foundation` (PostgreSQL at `ENGRAM_TEST_DATABASE_URL`, default
//! `postgres://postgres@127.0.0.1:5432/test`, in a scratch schema that is dropped afterwards).
#![allow(clippy::disallowed_methods)] // test and benchmark harnesses read their fixtures' locations from the environment

use engram::app::App;
use engram::config::Config;
use engram::eval::{load_corpus, load_questions};
use engram::index::TextIndex;
use engram::ingest::chunker::chunk_text;
use engram::store::NewDocument;
use engram::store::PassageRecord;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::Instant;
use tokio_util::sync::CancellationToken;

fn musique_dir() -> PathBuf {
    std::env::var("ENGRAM_MUSIQUE_DIR")
        .map(Into::into)
        .unwrap_or_else(|_| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data/musique")
        })
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Ingests `docs` through the full pipeline; returns (passages, seconds).
async fn ingest(config: Config, docs: &[NewDocument]) -> (std::sync::Arc<App>, u64, f64) {
    let app = App::open(config).await.expect("app opens");
    let started = Instant::now();
    let job = app.pipeline.submit(docs).await.unwrap();
    app.pipeline
        .run_job(&job, &CancellationToken::new(), &|_| {})
        .await
        .unwrap();
    let secs = started.elapsed().as_secs_f64();
    let passages = app.store.counts().await.unwrap().1 as u64;
    (app, passages, secs)
}

/// Baseline: the same passages into a bare tantivy index, no database.
fn index_only(docs: &[NewDocument]) -> (u64, f64) {
    let dir = tempfile::tempdir().unwrap();
    let index = TextIndex::open(dir.path()).unwrap();
    let cfg = Config::default().chunking;
    let started = Instant::now();
    let mut passages = Vec::new();
    for (i, d) in docs.iter().enumerate() {
        for (j, c) in chunk_text(&d.text, &cfg).into_iter().enumerate() {
            passages.push(PassageRecord {
                id: (i * 1000 + j) as i64,
                document_id: i.to_string(),
                ordinal: j as i64,
                title: d.title.clone(),
                text: d.text[c.start..c.end].to_string(),
                start_byte: c.start as i64,
                end_byte: c.end as i64,
            });
        }
    }
    index.add_passages(&passages).unwrap();
    index.commit().unwrap();
    (passages.len() as u64, started.elapsed().as_secs_f64())
}

/// One keep-alive HTTP/1.1 POST; returns the status code.
fn post(conn: &mut BufReader<TcpStream>, path: &str, body: &str) -> u16 {
    // One write per request, as a real client sends it.
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    conn.get_mut().write_all(request.as_bytes()).unwrap();
    let mut line = String::new();
    conn.read_line(&mut line).unwrap();
    let status = line
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let mut len = 0usize;
    loop {
        line.clear();
        conn.read_line(&mut line).unwrap();
        if line == "\r\n" {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().unwrap();
        }
    }
    let mut buf = vec![0u8; len];
    conn.read_exact(&mut buf).unwrap();
    status
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
    let dir = musique_dir();
    let docs =
        load_corpus(&dir.join("corpus.json")).expect("MuSiQue corpus (set ENGRAM_MUSIQUE_DIR)");
    let (questions, _) = load_questions(&dir.join("questions.json")).unwrap();
    println!(
        "machine: {} logical CPUs; corpus: {} documents",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        docs.len()
    );

    let (base_n, base_s) = index_only(&docs);
    println!(
        "baseline  tantivy only       {base_n} passages in {base_s:.2}s = {:.0} passages/s",
        base_n as f64 / base_s
    );

    // SQLite.
    let sqlite_dir = tempfile::tempdir().unwrap();
    let mut cfg = Config::default();
    cfg.embedding.enabled = false; // BM25 pipeline only; embedding is measured by `benches/dense.rs`
    cfg.graph.enabled = false; // and the graph by `benches/graph.rs`
    cfg.storage.data_dir = sqlite_dir.path().to_path_buf();
    let (app, n, s) = ingest(cfg, &docs).await;
    let sqlite_rate = n as f64 / s;
    println!("ingest    sqlite pipeline    {n} passages in {s:.2}s = {sqlite_rate:.0} passages/s ({:.2}x of tantivy-only)", sqlite_rate / (base_n as f64 / base_s));

    // PostgreSQL, in a scratch schema.
    let base = std::env::var("ENGRAM_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    sqlx::any::install_default_drivers();
    let admin = sqlx::AnyPool::connect(&base)
        .await
        .expect("PostgreSQL reachable");
    let schema = format!("engram_bench_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(&admin)
        .await
        .unwrap();
    let pg_dir = tempfile::tempdir().unwrap();
    let mut cfg = Config::default();
    cfg.embedding.enabled = false;
    cfg.graph.enabled = false;
    cfg.storage.data_dir = pg_dir.path().to_path_buf();
    cfg.storage.database_url = Some(format!("{base}?options=-c%20search_path%3D{schema}"));
    let (pg_app, n, s) = ingest(cfg, &docs).await;
    let pg_rate = n as f64 / s;
    println!("ingest    postgres pipeline  {n} passages in {s:.2}s = {pg_rate:.0} passages/s ({:.2}x of tantivy-only)", pg_rate / (base_n as f64 / base_s));
    pg_app.store.close().await;
    sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
        .execute(&admin)
        .await
        .unwrap();

    // BM25 latency in-process (baseline) and over HTTP.
    let rounds = 20;
    let index = app.pipeline.text_index().clone();
    let mut inproc = Vec::new();
    for _ in 0..rounds {
        for q in &questions {
            let t = Instant::now();
            std::hint::black_box(index.search(&q.question, 5).unwrap());
            inproc.push(t.elapsed().as_secs_f64() * 1000.0);
        }
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let token = CancellationToken::new();
    let server = tokio::spawn(engram::server::serve(app.clone(), listener, token.clone()));
    let bodies: Vec<String> = questions
        .iter()
        .map(|q| serde_json::json!({"query": q.question, "top_k": 5, "method": "bm25"}).to_string())
        .collect();
    let http = tokio::task::spawn_blocking(move || {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_nodelay(true).unwrap();
        let mut conn = BufReader::new(stream);
        let mut lat = Vec::new();
        for round in 0..rounds + 1 {
            for b in &bodies {
                let t = Instant::now();
                assert_eq!(post(&mut conn, "/v1/retrieve", b), 200);
                if round > 0 {
                    lat.push(t.elapsed().as_secs_f64() * 1000.0);
                }
            }
        }
        lat
    })
    .await
    .unwrap();
    token.cancel();
    let _ = server.await;
    for (name, mut v) in [
        ("in-process tantivy search", inproc),
        ("HTTP POST /v1/retrieve", http),
    ] {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        println!(
            "bm25      {name:<26} n={} p50 {:.3} ms  p99 {:.3} ms  mean {:.3} ms",
            v.len(),
            percentile(&v, 0.5),
            percentile(&v, 0.99),
            mean
        );
    }
}
