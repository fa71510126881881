//! The `VectorStore` contract, run against every implementation:
//!
//! * `edge::*`: the embedded qdrant-edge store in a temporary directory (plain, exact segments);
//! * `edge_indexed::*`: the same with a tiny indexing threshold, so that background optimisation builds HNSW
//!   segments (and qdrant-edge's proxy segments come into play) while the contract runs;
//! * `remote::*`: a Qdrant server, only when `QDRANT_URL` is set (optional `QDRANT_API_KEY`), each test in its own
//!   collection, dropped afterwards. Without `QDRANT_URL` they say so on stderr and return.
//!
//! Then edge-only tests: persistence across reopen, durability without closing, HNSW recall, WAL compaction and
//! concurrent use.
#![allow(clippy::disallowed_methods)] // test and benchmark harnesses read their fixtures' locations from the environment

use engram::index::vectors::{
    EdgeOptions, EdgeVectorStore, RemoteQdrant, RemoteQdrantConfig, VectorError, VectorPoint,
    VectorStore,
};
use futures::FutureExt;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::time::Duration;

// ---------------------------------------------------------------------------------------------------------------
// Helpers

/// A tiny deterministic generator (Knuth's MMIX LCG), so that no test depends on a random crate.
struct Lcg(u64);

impl Lcg {
    /// Uniform in [-1, 1).
    fn signed(&mut self) -> f32 {
        self.0 = self.0.wrapping_mul(6_364_136_223_846_793_005);
        self.0 = self.0.wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) as f32 / (1u64 << 31) as f32 * 2.0 - 1.0
    }

    /// A random L2-normalised vector.
    fn unit(&mut self, dim: usize) -> Vec<f32> {
        let mut v: Vec<f32> = (0..dim).map(|_| self.signed()).collect();
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.iter_mut().for_each(|x| *x /= norm);
        v
    }
}

fn point(id: i64, doc: &str, vector: Vec<f32>) -> VectorPoint {
    let document_id = doc.to_string();
    VectorPoint {
        passage_id: id,
        document_id,
        vector,
    }
}

/// `n` random points of dimension `dim`, ids `1..=n`, spread over documents `doc-0..doc-{docs-1}`.
fn random_points(rng: &mut Lcg, n: usize, dim: usize, docs: usize) -> Vec<VectorPoint> {
    let doc = |i: usize| format!("doc-{}", i % docs);
    (1..=n)
        .map(|i| point(i as i64, &doc(i), rng.unit(dim)))
        .collect()
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

async fn count(store: &dyn VectorStore) -> u64 {
    store.count().await.unwrap()
}

/// Searches, and checks that the results are sorted by score.
async fn top(store: &dyn VectorStore, vector: &[f32], k: usize) -> Vec<(i64, f32)> {
    let hits = store.search(vector, k).await.unwrap();
    let sorted = hits.windows(2).all(|w| w[0].1 >= w[1].1);
    assert!(sorted, "results are not sorted by score: {hits:?}");
    hits
}

fn assert_dimension_error<T: std::fmt::Debug>(result: Result<T, VectorError>, e: usize, g: usize) {
    let err = result.unwrap_err();
    let ok = matches!(err, VectorError::Dimension { expected, got } if (expected, got) == (e, g));
    assert!(ok, "expected a dimension error {e}/{g}, got {err}");
}

fn assert_close(score: f32, expected: f32, what: &str) {
    assert!(
        (score - expected).abs() < 1e-3,
        "{what}: {score} != {expected}"
    );
}

// ---------------------------------------------------------------------------------------------------------------
// The contract: each case receives a fresh store whose collection does not exist yet.

async fn missing_and_empty_collections(store: &dyn VectorStore) {
    let q = Lcg(1).unit(8);
    assert_eq!((top(store, &q, 5).await, count(store).await), (vec![], 0));
    store.ensure_collection(8).await.unwrap();
    assert_eq!((top(store, &q, 5).await, count(store).await), (vec![], 0));
    store.upsert(&[]).await.unwrap();
    assert_eq!(count(store).await, 0);
}

async fn ensure_collection_is_idempotent(store: &dyn VectorStore) {
    store.ensure_collection(16).await.unwrap();
    store.ensure_collection(16).await.unwrap();
    let mut rng = Lcg(2);
    store.upsert(&[point(1, "a", rng.unit(16))]).await.unwrap();
    store.ensure_collection(16).await.unwrap();
    assert_eq!(count(store).await, 1, "ensure_collection kept the points");

    assert_dimension_error(store.ensure_collection(17).await, 16, 17);
    let batch = [point(2, "a", rng.unit(16)), point(3, "a", rng.unit(15))];
    assert_dimension_error(store.upsert(&batch).await, 16, 15);
    assert_eq!(count(store).await, 1, "a rejected batch writes nothing");
    assert_dimension_error(store.search(&rng.unit(4), 3).await, 16, 4);
}

async fn upsert_then_search(store: &dyn VectorStore) {
    let dim = 16;
    store.ensure_collection(dim).await.unwrap();
    let mut rng = Lcg(3);
    let mut points = random_points(&mut rng, 50, dim, 5);
    // Ids round-trip whole: large and negative ones too.
    points.push(point(1 << 40, "doc-big", rng.unit(dim)));
    points.push(point(-7, "doc-negative", rng.unit(dim)));
    store.upsert(&points).await.unwrap();
    assert_eq!(count(store).await, 52);

    for p in points.iter().step_by(7).chain(&points[50..]) {
        let hits = top(store, &p.vector, 5).await;
        assert_eq!(hits.len(), 5, "top_k is respected");
        assert_eq!(hits[0].0, p.passage_id, "an identical vector comes first");
        assert_close(hits[0].1, 1.0, "cosine of identical vectors");
        for (id, score) in &hits {
            let stored = points.iter().find(|q| q.passage_id == *id).unwrap();
            assert_close(
                *score,
                dot(&p.vector, &stored.vector),
                "score is the cosine",
            );
        }
    }
    let all = top(store, &points[0].vector, 100).await;
    assert_eq!(all.len(), 52, "top_k above the count returns every point");
    assert_eq!(top(store, &points[0].vector, 0).await, vec![]);
    assert_eq!(top(store, &points[0].vector, 1).await.len(), 1);
}

async fn upsert_replaces_existing_ids(store: &dyn VectorStore) {
    let dim = 8;
    store.ensure_collection(dim).await.unwrap();
    let mut rng = Lcg(4);
    let (a, b, other) = (rng.unit(dim), rng.unit(dim), rng.unit(dim));
    let first = [point(1, "x", a.clone()), point(2, "x", other)];
    store.upsert(&first).await.unwrap();
    store.upsert(&[point(1, "y", b.clone())]).await.unwrap();
    assert_eq!(count(store).await, 2, "the id was replaced, not added");

    let hits = top(store, &b, 1).await;
    assert_eq!(hits[0].0, 1);
    assert_close(hits[0].1, 1.0, "cosine of identical vectors");
    let hits = top(store, &a, 2).await;
    let score = hits.iter().find(|h| h.0 == 1).expect("id 1 is found").1;
    assert_close(score, dot(&a, &b), "id 1 has the new vector");

    // The payload was replaced too: the point now belongs to "y".
    store.delete_document("x").await.unwrap();
    assert_eq!(top(store, &b, 5).await.len(), 1);
    assert_eq!(top(store, &b, 5).await[0].0, 1);
    store.delete_document("y").await.unwrap();
    assert_eq!(count(store).await, 0);
}

async fn delete_document_removes_only_its_points(store: &dyn VectorStore) {
    let dim = 12;
    store.ensure_collection(dim).await.unwrap();
    let points = random_points(&mut Lcg(5), 30, dim, 3);
    store.upsert(&points).await.unwrap();
    assert_eq!(count(store).await, 30);

    store.delete_document("doc-1").await.unwrap();
    assert_eq!(count(store).await, 20);
    for p in &points {
        let hits = top(store, &p.vector, 30).await;
        assert_eq!(hits.len(), 20);
        assert!(
            hits.iter().all(|h| h.0 % 3 != 1),
            "a deleted point is found"
        );
        if p.document_id != "doc-1" {
            assert_eq!(hits[0].0, p.passage_id, "other documents' points remain");
        }
    }
    store.delete_document("no-such-document").await.unwrap();
    store.delete_document("doc-1").await.unwrap();
    assert_eq!(count(store).await, 20);
}

async fn clear_empties(store: &dyn VectorStore) {
    let dim = 8;
    store.clear().await.unwrap();
    store.ensure_collection(dim).await.unwrap();
    let points = random_points(&mut Lcg(6), 20, dim, 4);
    store.upsert(&points).await.unwrap();
    assert_eq!(count(store).await, 20);

    store.clear().await.unwrap();
    assert_eq!(count(store).await, 0);
    assert_eq!(top(store, &points[0].vector, 5).await, vec![]);
    store.ensure_collection(dim).await.unwrap();
    store.upsert(&points[..5]).await.unwrap();
    assert_eq!(count(store).await, 5);
    assert_eq!(top(store, &points[0].vector, 1).await[0].0, 1);
}

/// The store's top-10 against exact brute-force cosine top-10 over 2 000 random unit vectors, 20 queries.
async fn recall_matches_brute_force(store: &dyn VectorStore) {
    let (dim, n) = (64, 2_000);
    store.ensure_collection(dim).await.unwrap();
    let mut rng = Lcg(7);
    let points = random_points(&mut rng, n, dim, 50);
    for chunk in points.chunks(500) {
        store.upsert(chunk).await.unwrap();
    }
    assert_eq!(count(store).await, n as u64);
    let recall = brute_force_recall(store, &points, &mut rng).await;
    assert!(recall >= 0.95, "recall@10 {recall} < 0.95");
}

/// Mean recall@10 of the store against exact cosine over `points`, for 20 random queries.
async fn brute_force_recall(store: &dyn VectorStore, points: &[VectorPoint], rng: &mut Lcg) -> f64 {
    let (queries, k) = (20, 10);
    let mut total = 0.0;
    for _ in 0..queries {
        let q = rng.unit(points[0].vector.len());
        let mut exact: Vec<(i64, f32)> = points
            .iter()
            .map(|p| (p.passage_id, dot(&q, &p.vector)))
            .collect();
        exact.sort_by(|x, y| y.1.total_cmp(&x.1));
        exact.truncate(k);
        let hits = top(store, &q, k).await;
        assert_eq!(hits.len(), k);
        let found = hits.iter().filter(|h| exact.iter().any(|e| e.0 == h.0));
        total += found.count() as f64 / k as f64;
    }
    total / queries as f64
}

// ---------------------------------------------------------------------------------------------------------------
// Running the contract against each implementation

macro_rules! contract {
    ($($case:ident),* $(,)?) => {
        mod edge {
            $(
                #[tokio::test]
                async fn $case() {
                    let options = super::EdgeOptions::default();
                    super::with_edge(options, |s| Box::pin(super::$case(s))).await;
                }
            )*
        }

        mod edge_indexed {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let options = super::tiny_thresholds(true, false);
                    super::with_edge(options, |s| Box::pin(super::$case(s))).await;
                }
            )*
        }

        mod remote {
            $(
                #[tokio::test]
                async fn $case() {
                    super::with_remote(stringify!($case), |s| Box::pin(super::$case(s))).await;
                }
            )*
        }
    };
}

contract!(
    missing_and_empty_collections,
    ensure_collection_is_idempotent,
    upsert_then_search,
    upsert_replaces_existing_ids,
    delete_document_removes_only_its_points,
    clear_empties,
    recall_matches_brute_force,
);

type Case = for<'a> fn(&'a dyn VectorStore) -> Pin<Box<dyn Future<Output = ()> + 'a>>;

/// Options that index (HNSW) any segment above 1 KB; with `graph_search`, indexes are searched by graph however
/// small.
///
/// Graph search on tiny segments is approximate in a way real ones are not: after deleting a third of 30 points,
/// qdrant's HNSW search may reach only some of the rest. Hence the contract runs with the default full-scan
/// threshold (segments under 10 MB are searched exactly, as in production) and only the recall tests search tiny
/// graphs.
fn tiny_thresholds(auto_optimize: bool, graph_search: bool) -> EdgeOptions {
    EdgeOptions {
        indexing_threshold_kb: 1,
        full_scan_threshold_kb: if graph_search { 1 } else { 10_000 },
        auto_optimize,
        hnsw_ef: None,
    }
}

async fn with_edge(options: EdgeOptions, case: Case) {
    let dir = tempfile::tempdir().unwrap();
    let store = EdgeVectorStore::open_with(dir.path(), options).unwrap();
    case(&store).await;
    let closed = tokio::time::timeout(Duration::from_secs(120), store.close()).await;
    closed
        .expect("the background optimisation finishes")
        .unwrap();
}

async fn with_remote(case_name: &str, case: Case) {
    let Ok(url) = std::env::var("QDRANT_URL") else {
        eprintln!(
            "QDRANT_URL is not set: no Qdrant server can run on this machine, so the remote VectorStore contract \
             test `{case_name}` did not run"
        );
        return;
    };
    let config = RemoteQdrantConfig {
        url,
        api_key: std::env::var("QDRANT_API_KEY").ok(),
        collection: format!("engram_test_{case_name}_{}", uuid::Uuid::new_v4().simple()),
        ..RemoteQdrantConfig::default()
    };
    let store = RemoteQdrant::connect(config)
        .await
        .expect("QDRANT_URL answers");
    let outcome = std::panic::AssertUnwindSafe(case(&store))
        .catch_unwind()
        .await;
    store
        .drop_collection()
        .await
        .expect("drop the test collection");
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Edge only

#[tokio::test]
async fn edge_reopen_sees_the_data_and_dimension() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Lcg(8);
    let points = random_points(&mut rng, 40, 24, 4);
    let store = EdgeVectorStore::open(dir.path()).unwrap();
    store.ensure_collection(24).await.unwrap();
    store.upsert(&points).await.unwrap();
    store.delete_document("doc-2").await.unwrap();
    store.close().await.unwrap();

    let store = EdgeVectorStore::open(dir.path()).unwrap();
    assert_eq!(count(&store).await, 30);
    assert_eq!(top(&store, &points[0].vector, 1).await[0].0, 1);
    let hits = top(&store, &points[1].vector, 40).await;
    assert!(
        hits.iter().all(|h| h.0 % 4 != 2),
        "deleted points stay deleted"
    );
    store.ensure_collection(24).await.unwrap();
    assert_dimension_error(store.ensure_collection(25).await, 24, 25);
    assert_eq!(store.stats().await.unwrap().dimension, Some(24));

    // Writes after reopening win over the reopened points (operation numbers go on).
    let new = rng.unit(24);
    store
        .upsert(&[point(1, "doc-1", new.clone())])
        .await
        .unwrap();
    assert_eq!(count(&store).await, 30);
    let hit = top(&store, &new, 1).await[0];
    assert_eq!(hit.0, 1);
    assert_close(hit.1, 1.0, "the new vector replaced the old one");
}

#[tokio::test]
async fn edge_open_without_a_collection_and_open_twice() {
    let dir = tempfile::tempdir().unwrap();
    EdgeVectorStore::open(dir.path())
        .unwrap()
        .close()
        .await
        .unwrap();
    let store = EdgeVectorStore::open(dir.path()).unwrap();
    assert_eq!(count(&store).await, 0);
    assert_eq!(store.stats().await.unwrap().dimension, None);
    let err = store
        .upsert(&[point(1, "a", vec![1.0, 0.0])])
        .await
        .unwrap_err();
    assert!(matches!(err, VectorError::Backend(_)), "{err}");

    store.ensure_collection(4).await.unwrap();
    let err = EdgeVectorStore::open(dir.path()).unwrap_err();
    assert!(matches!(err, VectorError::Open { .. }), "{err}");
}

/// Copies the directory while the store is still open, as a crash would leave it: what upsert and delete_document
/// returned is already on disk.
#[tokio::test]
async fn edge_writes_are_durable_when_they_return() {
    let dir = tempfile::tempdir().unwrap();
    let points = random_points(&mut Lcg(9), 25, 8, 5);
    let (live, crashed) = (dir.path().join("live"), dir.path().join("crashed"));
    let store = EdgeVectorStore::open(&live).unwrap();
    store.ensure_collection(8).await.unwrap();
    store.upsert(&points).await.unwrap();
    store.delete_document("doc-3").await.unwrap();
    copy_dir(&live, &crashed);

    let copy = EdgeVectorStore::open(&crashed).unwrap();
    assert_eq!(count(&copy).await, 20);
    assert_eq!(top(&copy, &points[4].vector, 1).await[0].0, 5);
    drop(store);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().map(Result::unwrap) {
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Builds HNSW indexes explicitly, then checks recall, deletes, replacements and reopening on indexed segments.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_hnsw_index_recall_updates_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (dim, n) = (64, 2_000);
    let mut rng = Lcg(10);
    let points = random_points(&mut rng, n, dim, 50);
    let store = EdgeVectorStore::open_with(dir.path(), tiny_thresholds(false, true)).unwrap();
    store.ensure_collection(dim).await.unwrap();
    store.upsert(&points).await.unwrap();
    assert_eq!(store.stats().await.unwrap().indexed_vectors, 0);
    assert!(
        store.optimize().await.unwrap(),
        "the optimiser built an index"
    );
    let stats = store.stats().await.unwrap();
    assert!(stats.indexed_vectors >= n, "{stats:?}");
    assert_eq!(count(&store).await, n as u64);
    let recall = brute_force_recall(&store, &points, &mut rng).await;
    assert!(recall >= 0.95, "HNSW recall@10 {recall} < 0.95");

    store.delete_document("doc-7").await.unwrap();
    let left = (n - n / 50) as u64;
    assert_eq!(count(&store).await, left);
    let replaced = rng.unit(dim);
    store
        .upsert(&[point(100, "doc-0", replaced.clone())])
        .await
        .unwrap();
    assert_eq!(top(&store, &replaced, 1).await[0].0, 100);
    let hits = top(&store, &points[6].vector, 50).await;
    assert!(
        hits.iter().all(|h| h.0 % 50 != 7),
        "deleted points are not found"
    );
    store.close().await.unwrap();

    let store = EdgeVectorStore::open_with(dir.path(), tiny_thresholds(false, true)).unwrap();
    assert_eq!(count(&store).await, left);
    assert!(store.stats().await.unwrap().indexed_vectors >= left as usize);
    assert_eq!(top(&store, &points[0].vector, 1).await[0].0, 1);
}

/// qdrant-edge never truncates its WAL; the store drops all closed WAL segments but the last when it opens, and
/// writes after that still replace older points.
#[tokio::test]
async fn edge_wal_is_compacted_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let dim = 1024;
    let mut rng = Lcg(11);
    let options = EdgeOptions {
        auto_optimize: false,
        ..EdgeOptions::default()
    };
    let store = EdgeVectorStore::open_with(dir.path(), options.clone()).unwrap();
    store.ensure_collection(dim).await.unwrap();
    store.upsert(&[point(1, "a", rng.unit(dim))]).await.unwrap();
    // About 5 KB of WAL per point: three 32 MiB WAL segments.
    for batch in 0..20 {
        let ids = 2 + batch * 1_000..2 + (batch + 1) * 1_000;
        let points: Vec<VectorPoint> = ids.map(|id| point(id, "b", rng.unit(dim))).collect();
        store.upsert(&points).await.unwrap();
    }
    store.close().await.unwrap();

    let closed_segments = || {
        let entries = std::fs::read_dir(dir.path().join("shard/wal")).unwrap();
        let names = entries.map(|e| e.unwrap().file_name().to_string_lossy().into_owned());
        names.filter(|name| name.starts_with("closed-")).count()
    };
    assert!(closed_segments() >= 2, "the test wrote too little WAL");
    let store = EdgeVectorStore::open_with(dir.path(), options).unwrap();
    assert_eq!(closed_segments(), 1);
    assert_eq!(count(&store).await, 20_001);
    let second = rng.unit(dim);
    store
        .upsert(&[point(1, "a", second.clone())])
        .await
        .unwrap();
    let hit = top(&store, &second, 1).await[0];
    assert_eq!(hit.0, 1);
    assert_close(hit.1, 1.0, "the new vector replaced the old one");
}

/// Searches run while writes and background optimisations go on; every call succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_concurrent_searches_writes_and_optimisation() {
    let dir = tempfile::tempdir().unwrap();
    let store = EdgeVectorStore::open_with(dir.path(), tiny_thresholds(true, true)).unwrap();
    let dim = 32;
    store.ensure_collection(dim).await.unwrap();
    let mut rng = Lcg(12);
    let points = random_points(&mut rng, 3_000, dim, 30);
    let writer = {
        let (store, points) = (store.clone(), points.clone());
        tokio::spawn(async move {
            for chunk in points.chunks(100) {
                store.upsert(chunk).await.unwrap();
            }
            store.delete_document("doc-0").await.unwrap();
        })
    };
    let readers: Vec<_> = (0..4)
        .map(|r| {
            let (store, points) = (store.clone(), points.clone());
            tokio::spawn(async move {
                for i in 0..100 {
                    let q = &points[(r * 100 + i) % points.len()].vector;
                    assert!(top(&store, q, 10).await.len() <= 10);
                    count(&store).await;
                }
            })
        })
        .collect();
    writer.await.unwrap();
    for r in readers {
        r.await.unwrap();
    }
    store.optimize().await.unwrap();
    assert_eq!(count(&store).await, 2_900);
    let kept: Vec<VectorPoint> = points
        .into_iter()
        .filter(|p| p.document_id != "doc-0")
        .collect();
    let recall = brute_force_recall(&store, &kept, &mut rng).await;
    assert!(recall >= 0.95, "recall@10 {recall} < 0.95");
}
