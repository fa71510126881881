//! The embedded vector store: one `qdrant-edge` shard in a directory of the data dir.
//!
//! Layout: `DIR/shard/` is the shard (`edge_config.json` keeps the dimension, `segments/` the points, `wal/` the
//! write-ahead log). qdrant-edge is synchronous and runs no background work of its own, so:
//!
//! * every call runs on a blocking thread, mutations one at a time (a writer mutex) while searches share a read lock;
//! * writes are made durable by flushing the shard before returning (qdrant-edge 0.7.2 never replays its WAL, so the
//!   flushed segments are the only durable state);
//! * new points land in a plain (brute-force) segment; HNSW indexes are only built by [`EdgeVectorStore::optimize`]
//!   (qdrant's optimisers, run in the calling thread), which the store runs on a background thread after writes
//!   ([`EdgeOptions::auto_optimize`]). Searches go on meanwhile (qdrant's proxy segments); writes wait.

mod shard;

use super::{VectorError, VectorPoint, VectorStore};
use qdrant_edge::{EdgeShard, PointStructPersisted};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// The shard's directory inside the store's directory.
const SHARD_DIR: &str = "shard";

/// Tuning of an [`EdgeVectorStore`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgeOptions {
    /// A segment whose vectors take more than this many KB gets an HNSW index when optimised (qdrant's
    /// `indexing_threshold`; the default 10 000 KB is about 6 500 vectors of dimension 384; 0 disables indexing).
    pub indexing_threshold_kb: usize,
    /// Segments whose vectors take less than this many KB are searched exactly even when indexed (qdrant's HNSW
    /// `full_scan_threshold`, default 10 000 KB). Applies to indexes built afterwards.
    pub full_scan_threshold_kb: usize,
    /// Run [`EdgeVectorStore::optimize`] on a background thread (unless one is running) after an upsert or delete
    /// that leaves more un-indexed vectors than the indexing threshold, or more than 20% (and at least 1 000) of
    /// the points deleted since the last optimisation (default true).
    pub auto_optimize: bool,
    /// Beam width of HNSW searches (qdrant's `hnsw_ef`; `None`, the default, uses the index's `ef_construct`,
    /// 100). Larger is slower and more exact.
    pub hnsw_ef: Option<usize>,
}

impl Default for EdgeOptions {
    fn default() -> Self {
        Self {
            indexing_threshold_kb: 10_000,
            full_scan_threshold_kb: 10_000,
            auto_optimize: true,
            hnsw_ef: None,
        }
    }
}

/// Counters of an [`EdgeVectorStore`] (from qdrant-edge's shard info; approximate while deletions are pending).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EdgeStats {
    /// The collection's dimension, `None` before [`VectorStore::ensure_collection`].
    pub dimension: Option<usize>,
    /// Number of segments.
    pub segments: usize,
    /// Number of points.
    pub points: usize,
    /// Number of vectors in HNSW-indexed segments.
    pub indexed_vectors: usize,
    /// Whether a background optimisation is running.
    pub optimizing: bool,
}

/// The embedded `qdrant-edge` vector store (see the [module docs](self)).
///
/// Only one store may have a directory open at a time: qdrant-edge locks its WAL directory, so a second
/// [`open`](Self::open) (in this or another process) fails until the first store and its background optimisation
/// are gone.
#[derive(Debug, Clone)]
pub struct EdgeVectorStore {
    inner: Arc<Inner>,
}

struct Inner {
    /// The shard directory (`DIR/shard`).
    dir: PathBuf,
    options: EdgeOptions,
    /// Serialises mutations, flushes and optimisations (qdrant-edge's flush panics when it meets a concurrent
    /// update).
    writer: Mutex<()>,
    /// The shard; `None` before the collection exists.
    shard: RwLock<Option<EdgeShard>>,
    /// Whether a background optimisation is running (shared with its thread, which clears it after letting go of
    /// the store).
    optimizing: Arc<AtomicBool>,
    /// Points deleted since the optimisers last ran (to decide when vacuuming is due).
    deleted_since_optimize: AtomicUsize,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EdgeVectorStore")
            .field("dir", &self.dir)
            .field("options", &self.options)
            .field("optimizing", &self.optimizing.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl EdgeVectorStore {
    /// Opens (or prepares) the store in `dir` with [`EdgeOptions::default`]; the collection is loaded if it exists.
    pub fn open(dir: &Path) -> Result<Self, VectorError> {
        Self::open_with(dir, EdgeOptions::default())
    }

    /// Opens (or prepares) the store in `dir` with `options` (which also apply to an existing collection).
    pub fn open_with(dir: &Path, options: EdgeOptions) -> Result<Self, VectorError> {
        let open_err = |reason: String| VectorError::Open {
            target: dir.display().to_string(),
            reason,
        };
        std::fs::create_dir_all(dir).map_err(|e| open_err(e.to_string()))?;
        let shard_dir = dir.join(SHARD_DIR);
        let shard = if shard::exists(&shard_dir) {
            Some(shard::load(&shard_dir, &options).map_err(open_err)?)
        } else {
            // At most the leftovers of an interrupted creation.
            if shard_dir.exists() {
                std::fs::remove_dir_all(&shard_dir).map_err(|e| open_err(e.to_string()))?;
            }
            None
        };
        Ok(Self {
            inner: Arc::new(Inner {
                dir: shard_dir,
                options,
                writer: Mutex::new(()),
                shard: RwLock::new(shard),
                optimizing: Arc::new(AtomicBool::new(false)),
                deleted_since_optimize: AtomicUsize::new(0),
            }),
        })
    }

    /// Runs qdrant-edge's optimisers until they have nothing left to do: builds HNSW indexes for segments above the
    /// indexing threshold, merges small segments and vacuums deleted points. Blocks writes (not searches) meanwhile.
    /// Returns whether anything changed.
    pub async fn optimize(&self) -> Result<bool, VectorError> {
        self.run(|inner| inner.optimize_now()).await
    }

    /// Whether a background optimisation is running (it holds the store open; see [`EdgeOptions::auto_optimize`]).
    pub fn is_optimizing(&self) -> bool {
        self.inner.optimizing.load(Ordering::SeqCst)
    }

    /// Waits for a background optimisation to finish, then closes the store (flushing it), so that the directory
    /// can be opened again at once. Merely dropping the store leaves the shard open until a running background
    /// optimisation ends. Clones of the store keep it open.
    pub async fn close(self) -> Result<(), VectorError> {
        while self.is_optimizing() {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        tokio::task::spawn_blocking(move || shard::guarded(move || drop(self)))
            .await
            .map_err(|e| VectorError::Backend(format!("vector store task failed: {e}")))?
            .map_err(VectorError::Backend)
    }

    /// The store's counters.
    pub async fn stats(&self) -> Result<EdgeStats, VectorError> {
        self.run(|inner| {
            let guard = inner.read();
            let optimizing = inner.optimizing.load(Ordering::SeqCst);
            let Some(shard) = guard.as_ref() else {
                return Ok(EdgeStats {
                    optimizing,
                    ..EdgeStats::default()
                });
            };
            let info = shard.info();
            Ok(EdgeStats {
                dimension: Some(shard::dimension_of(shard)?),
                segments: info.segments_count,
                points: info.points_count,
                indexed_vectors: info.indexed_vectors_count,
                optimizing,
            })
        })
        .await
    }

    /// Runs `f` on a blocking thread.
    async fn run<T, F>(&self, f: F) -> Result<T, VectorError>
    where
        T: Send + 'static,
        F: FnOnce(&Arc<Inner>) -> Result<T, VectorError> + Send + 'static,
    {
        let inner = self.inner.clone();
        crate::cpu::run(move || f(&inner))
            .await
            .map_err(|e| VectorError::Backend(format!("vector store task failed: {e}")))?
    }
}

#[async_trait::async_trait]
impl VectorStore for EdgeVectorStore {
    fn name(&self) -> &'static str {
        "qdrant-edge"
    }

    async fn ensure_collection(&self, dimension: usize) -> Result<(), VectorError> {
        if dimension == 0 {
            return Err(VectorError::Backend(
                "the vector dimension must be positive".into(),
            ));
        }
        self.run(move |inner| {
            let _writer = inner.lock_writer();
            if let Some(shard) = inner.read().as_ref() {
                let expected = shard::dimension_of(shard)?;
                if expected != dimension {
                    return Err(VectorError::Dimension {
                        expected,
                        got: dimension,
                    });
                }
                return Ok(());
            }
            let created = shard::create(&inner.dir, dimension, &inner.options)?;
            *inner.write() = Some(created);
            Ok(())
        })
        .await
    }

    async fn upsert(&self, points: &[VectorPoint]) -> Result<(), VectorError> {
        if points.is_empty() {
            return Ok(());
        }
        let batch: Vec<(usize, PointStructPersisted)> = points
            .iter()
            .map(|p| (p.vector.len(), shard::to_point(p)))
            .collect();
        let optimize = self
            .run(move |inner| {
                let _writer = inner.lock_writer();
                let guard = inner.read();
                let shard = guard.as_ref().ok_or_else(no_collection)?;
                let dimension = shard::dimension_of(shard)?;
                if let Some((got, _)) = batch.iter().find(|(len, _)| *len != dimension) {
                    return Err(VectorError::Dimension {
                        expected: dimension,
                        got: *got,
                    });
                }
                shard::upsert(shard, batch.into_iter().map(|(_, p)| p).collect())?;
                Ok(inner.needs_optimization(shard, dimension))
            })
            .await?;
        self.inner.after_write(optimize);
        Ok(())
    }

    async fn delete_document(&self, document_id: &str) -> Result<(), VectorError> {
        let document_id = document_id.to_string();
        let optimize = self
            .run(move |inner| {
                let _writer = inner.lock_writer();
                let guard = inner.read();
                let Some(shard) = guard.as_ref() else {
                    return Ok(false);
                };
                let before = shard.info().points_count;
                shard::delete_document(shard, &document_id)?;
                let deleted = before.saturating_sub(shard.info().points_count);
                inner
                    .deleted_since_optimize
                    .fetch_add(deleted, Ordering::SeqCst);
                Ok(inner.needs_optimization(shard, shard::dimension_of(shard)?))
            })
            .await?;
        self.inner.after_write(optimize);
        Ok(())
    }

    async fn clear(&self) -> Result<(), VectorError> {
        self.run(|inner| {
            let _writer = inner.lock_writer();
            let mut guard = inner.write();
            let Some(shard) = guard.take() else {
                return Ok(());
            };
            let dimension = shard::dimension_of(&shard)?;
            // Dropping the shard flushes it and releases its WAL lock; then start afresh (this also drops the WAL).
            shard::guarded(move || drop(shard)).map_err(VectorError::Backend)?;
            std::fs::remove_dir_all(&inner.dir).map_err(|e| {
                VectorError::Backend(format!("cannot remove {}: {e}", inner.dir.display()))
            })?;
            *guard = Some(shard::create(&inner.dir, dimension, &inner.options)?);
            Ok(())
        })
        .await
    }

    async fn search(&self, vector: &[f32], top_k: usize) -> Result<Vec<(i64, f32)>, VectorError> {
        if top_k == 0 {
            return Ok(Vec::new());
        }
        let query = vector.to_vec();
        self.run(move |inner| {
            let guard = inner.read();
            let Some(shard) = guard.as_ref() else {
                return Ok(Vec::new());
            };
            let expected = shard::dimension_of(shard)?;
            if query.len() != expected {
                return Err(VectorError::Dimension {
                    expected,
                    got: query.len(),
                });
            }
            shard::search(shard, query, top_k, inner.options.hnsw_ef)
        })
        .await
    }

    async fn count(&self) -> Result<u64, VectorError> {
        self.run(|inner| {
            let guard = inner.read();
            let Some(shard) = guard.as_ref() else {
                return Ok(0);
            };
            Ok(shard::count(shard)? as u64)
        })
        .await
    }
}

impl Inner {
    fn lock_writer(&self) -> MutexGuard<'_, ()> {
        self.writer.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn read(&self) -> RwLockReadGuard<'_, Option<EdgeShard>> {
        self.shard.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Option<EdgeShard>> {
        self.shard.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs the optimisers (writer held, searches go on) and flushes what they changed.
    fn optimize_now(&self) -> Result<bool, VectorError> {
        let _writer = self.lock_writer();
        let guard = self.read();
        let Some(shard) = guard.as_ref() else {
            return Ok(false);
        };
        self.deleted_since_optimize.store(0, Ordering::SeqCst);
        let changed = shard::optimize(shard)?;
        if changed {
            shard::flush(shard)?;
        }
        Ok(changed)
    }

    /// Whether an optimiser probably has work: more un-indexed vectors than the indexing threshold, or more than
    /// 20% (and at least 1 000) of the points deleted since the optimisers last ran (qdrant's vacuum defaults).
    /// qdrant-edge does not expose its optimisers' planning, so this approximates it from the shard's counters.
    fn needs_optimization(&self, shard: &EdgeShard, dimension: usize) -> bool {
        let info = shard.info();
        let unindexed = info.points_count.saturating_sub(info.indexed_vectors_count);
        let threshold = self.options.indexing_threshold_kb;
        let indexing = threshold > 0
            && unindexed.saturating_mul(dimension * 4) > threshold.saturating_mul(1024);
        let deleted = self.deleted_since_optimize.load(Ordering::SeqCst);
        let vacuum = deleted >= 1_000 && deleted * 5 > info.points_count + deleted;
        indexing || vacuum
    }

    /// With [`EdgeOptions::auto_optimize`], starts the optimisers after a write that left them work.
    fn after_write(self: &Arc<Self>, needed: bool) {
        if needed && self.options.auto_optimize {
            self.spawn_optimizer();
        }
    }

    /// Starts [`Inner::optimize_now`] on a background thread unless one is running.
    fn spawn_optimizer(self: &Arc<Self>) {
        if self.optimizing.swap(true, Ordering::SeqCst) {
            return;
        }
        let inner = self.clone();
        let flag = self.optimizing.clone();
        let spawned = std::thread::Builder::new()
            .name("engram-vector-optimize".into())
            .spawn(move || {
                let started = std::time::Instant::now();
                match inner.optimize_now() {
                    Ok(changed) => tracing::info!(
                        changed,
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "qdrant-edge optimisation finished"
                    ),
                    Err(e) => tracing::warn!(error = %e, "qdrant-edge optimisation failed"),
                }
                // Let go of the store first, so that whoever sees the flag cleared may close and reopen it.
                drop(inner);
                flag.store(false, Ordering::SeqCst);
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start the qdrant-edge optimiser");
            self.optimizing.store(false, Ordering::SeqCst);
        }
    }
}

fn no_collection() -> VectorError {
    VectorError::Backend(
        "the vector collection does not exist (call ensure_collection first)".into(),
    )
}
