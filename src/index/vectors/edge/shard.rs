//! The qdrant-edge calls of the embedded store: creating, loading, writing and reading the shard. Each call turns
//! a panic inside qdrant-edge (its `flush` panics rather than returning errors) into an error.

use super::EdgeOptions;
use crate::index::vectors::{passage_id, point_id, VectorError, VectorPoint, DOCUMENT_ID_KEY};
use qdrant_edge::external::serde_json::{Map, Value};
use qdrant_edge::{
    Condition, CountRequest, CreateIndex, Distance, EdgeConfig, EdgeOptimizersConfig, EdgeShard,
    EdgeVectorParams, FieldCondition, FieldIndexOperations, Filter, HnswIndexConfig, JsonPath,
    Match, NamedQuery, PayloadFieldSchema, PayloadSchemaType, PointId, PointInsertOperations,
    PointOperations, PointStruct, PointStructPersisted, QueryEnum, SearchParams, SearchRequest,
    UpdateOperation, VectorInternal, WithPayloadInterface, WithVector, DEFAULT_VECTOR_NAME,
};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

/// The shard's configuration file (written by qdrant-edge).
const CONFIG_FILE: &str = "edge_config.json";
/// Points per qdrant-edge update operation (each is one WAL record).
const UPSERT_CHUNK: usize = 1024;

/// Whether `dir` holds a shard (its config is written before any segment).
pub(super) fn exists(dir: &Path) -> bool {
    let has_segments =
        std::fs::read_dir(dir.join("segments")).is_ok_and(|mut entries| entries.next().is_some());
    dir.join(CONFIG_FILE).is_file() || has_segments
}

/// Loads the shard in `dir` (compacting its WAL when it has grown) and applies `options` to it.
pub(super) fn load(dir: &Path, options: &EdgeOptions) -> Result<EdgeShard, String> {
    let wal = dir.join("wal");
    let load = || {
        guarded(|| EdgeShard::load(dir, None))?
            .map_err(|e| format!("cannot load the shard (is another engram using it?): {e}"))
    };
    // Loading takes the WAL's lock, so that a WAL in use elsewhere is never touched.
    let mut shard = load()?;
    if !old_wal_segments(&wal).is_empty() {
        guarded(move || drop(shard))?;
        for path in old_wal_segments(&wal) {
            std::fs::remove_file(&path)
                .map_err(|e| format!("cannot remove {}: {e}", path.display()))?;
        }
        shard = load()?;
    }
    apply_options(&shard, options)?;
    Ok(shard)
}

/// Creates a shard in `dir` (replacing whatever is there) for cosine vectors of `dimension`, with a keyword index on
/// the document id.
pub(super) fn create(
    dir: &Path,
    dimension: usize,
    options: &EdgeOptions,
) -> Result<EdgeShard, VectorError> {
    let io =
        |e: std::io::Error| VectorError::Backend(format!("cannot create {}: {e}", dir.display()));
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(io)?;
    }
    std::fs::create_dir_all(dir).map_err(io)?;
    let config = EdgeConfig::builder()
        .vector(
            DEFAULT_VECTOR_NAME,
            EdgeVectorParams::builder(dimension, Distance::Cosine).build(),
        )
        .hnsw_config(HnswIndexConfig {
            full_scan_threshold: options.full_scan_threshold_kb,
            ..HnswIndexConfig::default()
        })
        .optimizers(EdgeOptimizersConfig {
            indexing_threshold: Some(options.indexing_threshold_kb),
            ..EdgeOptimizersConfig::default()
        })
        .build();
    let shard = guarded(|| EdgeShard::new(dir, config))
        .map_err(VectorError::Backend)?
        .map_err(backend)?;
    let index = FieldIndexOperations::CreateIndex(CreateIndex {
        field_name: document_id_path(),
        field_schema: Some(PayloadFieldSchema::FieldType(PayloadSchemaType::Keyword)),
    });
    update(&shard, UpdateOperation::FieldIndexOperation(index))?;
    flush(&shard)?;
    Ok(shard)
}

/// The point of a passage: id, vector and `{"document_id": ...}`.
pub(super) fn to_point(p: &VectorPoint) -> PointStructPersisted {
    let mut payload = Map::new();
    payload.insert(
        DOCUMENT_ID_KEY.to_string(),
        Value::String(p.document_id.clone()),
    );
    PointStruct::new(
        point_id(p.passage_id),
        p.vector.clone(),
        Value::Object(payload),
    )
    .into()
}

/// Inserts or replaces points, then flushes.
pub(super) fn upsert(
    shard: &EdgeShard,
    mut points: Vec<PointStructPersisted>,
) -> Result<(), VectorError> {
    while !points.is_empty() {
        let rest = points.split_off(points.len().min(UPSERT_CHUNK));
        let batch = std::mem::replace(&mut points, rest);
        let op = PointOperations::UpsertPoints(PointInsertOperations::PointsList(batch));
        update(shard, UpdateOperation::PointOperation(op))?;
    }
    flush(shard)
}

/// Deletes a document's points, then flushes.
pub(super) fn delete_document(shard: &EdgeShard, document_id: &str) -> Result<(), VectorError> {
    let filter = Filter::new_must(Condition::Field(FieldCondition::new_match(
        document_id_path(),
        Match::from(document_id.to_string()),
    )));
    let op = PointOperations::DeletePointsByFilter(filter);
    update(shard, UpdateOperation::PointOperation(op))?;
    flush(shard)
}

/// The `top_k` points nearest to `query` (of the shard's dimension), best first; `hnsw_ef` is the HNSW beam width.
pub(super) fn search(
    shard: &EdgeShard,
    query: Vec<f32>,
    top_k: usize,
    hnsw_ef: Option<usize>,
) -> Result<Vec<(i64, f32)>, VectorError> {
    let request = SearchRequest {
        query: QueryEnum::Nearest(NamedQuery {
            query: VectorInternal::Dense(query),
            using: None,
        }),
        filter: None,
        params: hnsw_ef.map(|ef| SearchParams {
            hnsw_ef: Some(ef),
            ..SearchParams::default()
        }),
        limit: top_k,
        offset: 0,
        with_payload: Some(WithPayloadInterface::Bool(false)),
        with_vector: Some(WithVector::Bool(false)),
        score_threshold: None,
    };
    let found = guarded(|| shard.search(request))
        .map_err(VectorError::Backend)?
        .map_err(backend)?;
    Ok(found
        .into_iter()
        .filter_map(|p| match p.id {
            PointId::NumId(id) => Some((passage_id(id), p.score)),
            PointId::Uuid(_) => None,
        })
        .collect())
}

/// The exact number of points.
pub(super) fn count(shard: &EdgeShard) -> Result<usize, VectorError> {
    let request = CountRequest {
        filter: None,
        exact: true,
    };
    guarded(|| shard.count(request))
        .map_err(VectorError::Backend)?
        .map_err(backend)
}

/// Runs the optimisers until they have no more work; returns whether anything changed.
pub(super) fn optimize(shard: &EdgeShard) -> Result<bool, VectorError> {
    guarded(|| shard.optimize())
        .map_err(VectorError::Backend)?
        .map_err(backend)
}

/// The dimension of the shard's (unnamed) dense vector.
pub(super) fn dimension_of(shard: &EdgeShard) -> Result<usize, VectorError> {
    shard
        .config()
        .vectors
        .get(DEFAULT_VECTOR_NAME)
        .map(|v| v.size)
        .ok_or_else(|| VectorError::Backend("the shard has no default dense vector".into()))
}

/// Flushes the WAL and every segment to disk (and waits for it).
pub(super) fn flush(shard: &EdgeShard) -> Result<(), VectorError> {
    guarded(|| shard.flush()).map_err(|e| VectorError::Backend(format!("flush failed: {e}")))
}

/// Runs `f`, turning a panic inside qdrant-edge into an error message.
pub(super) fn guarded<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|panic| {
        let message = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        format!("qdrant-edge panicked: {message}")
    })
}

/// Applies the options to a loaded shard's persisted configuration (only what differs, so that no optimiser sees
/// a configuration change without cause).
fn apply_options(shard: &EdgeShard, options: &EdgeOptions) -> Result<(), String> {
    let (optimizers, hnsw) = {
        let config = shard.config();
        (config.optimizers.clone(), config.hnsw_config)
    };
    if optimizers.indexing_threshold != Some(options.indexing_threshold_kb) {
        let wanted = EdgeOptimizersConfig {
            indexing_threshold: Some(options.indexing_threshold_kb),
            ..optimizers
        };
        shard
            .set_optimizers_config(wanted)
            .map_err(|e| e.to_string())?;
    }
    if hnsw.full_scan_threshold != options.full_scan_threshold_kb {
        let wanted = HnswIndexConfig {
            full_scan_threshold: options.full_scan_threshold_kb,
            ..hnsw
        };
        shard.set_hnsw_config(wanted).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Applies an update operation.
fn update(shard: &EdgeShard, op: UpdateOperation) -> Result<(), VectorError> {
    guarded(|| shard.update(op))
        .map_err(VectorError::Backend)?
        .map_err(backend)
}

/// The payload path of the document id.
fn document_id_path() -> JsonPath {
    JsonPath::try_from(DOCUMENT_ID_KEY).expect("`document_id` is a valid JSON path")
}

fn backend(e: qdrant_edge::OperationError) -> VectorError {
    VectorError::Backend(e.to_string())
}

/// The WAL's closed segments but the last, which [`load`] deletes. qdrant-edge 0.7.2 writes every update to its WAL
/// but never truncates or replays it (durability comes from flushing the segments), so without this the WAL would
/// grow by every vector ever written. The last closed segment must stay: the WAL's last index numbers the next
/// operation, and a point only accepts updates numbered above its version (a fresh WAL would make later upserts of
/// existing ids silently do nothing).
fn old_wal_segments(wal_dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(wal_dir) else {
        return Vec::new();
    };
    let mut closed: Vec<(u64, PathBuf)> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let start = name.strip_prefix("closed-")?.parse().ok()?;
            Some((start, e.path()))
        })
        .collect();
    closed.sort_unstable();
    closed.pop();
    closed.into_iter().map(|(_, path)| path).collect()
}
