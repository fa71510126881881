//! A remote Qdrant server through `qdrant-client` (gRPC, port 6334).
//!
//! One collection (`RemoteQdrantConfig::collection`) with an unnamed cosine vector and a keyword payload index on
//! `document_id`. Writes wait for the server to apply them (`wait=true`); counts are exact.

use super::{
    check_points, passage_id, point_id, VectorError, VectorPoint, VectorStore, DOCUMENT_ID_KEY,
};
use qdrant_client::qdrant::point_id::PointIdOptions;
use qdrant_client::qdrant::vectors_config::Config as VectorsConfigKind;
use qdrant_client::qdrant::{
    Condition, CountPointsBuilder, CreateCollectionBuilder, CreateFieldIndexCollectionBuilder,
    DeletePointsBuilder, Distance, FieldType, Filter, PointStruct, Query, QueryPointsBuilder,
    UpsertPointsBuilder, Value, VectorParamsBuilder,
};
use qdrant_client::{Payload, Qdrant, QdrantError};
use serde::{Deserialize, Serialize};
use std::sync::RwLock;
use std::time::Duration;

/// Points per upsert request.
const UPSERT_CHUNK: usize = 256;

/// Connection and collection settings of a remote Qdrant (`[vectors.qdrant]`).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RemoteQdrantConfig {
    /// gRPC URL of the server (default `http://localhost:6334`).
    pub url: String,
    /// API key, if the server requires one.
    pub api_key: Option<String>,
    /// Collection name (default `engram_passages`).
    pub collection: String,
    /// Number of shards of a new collection (default 1).
    pub shard_number: u32,
    /// Replication factor of a new collection (default 1).
    pub replication_factor: u32,
    /// Keep a new collection's vectors on disk (memory-mapped) instead of in RAM (default false).
    pub on_disk: bool,
}

impl Default for RemoteQdrantConfig {
    fn default() -> Self {
        Self {
            url: "http://localhost:6334".into(),
            api_key: None,
            collection: "engram_passages".into(),
            shard_number: 1,
            replication_factor: 1,
            on_disk: false,
        }
    }
}

/// Like a derived `Debug`, but the API key is redacted (configurations get logged).
impl std::fmt::Debug for RemoteQdrantConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteQdrantConfig")
            .field("url", &self.url)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("collection", &self.collection)
            .field("shard_number", &self.shard_number)
            .field("replication_factor", &self.replication_factor)
            .field("on_disk", &self.on_disk)
            .finish()
    }
}

/// A [`VectorStore`] on a remote Qdrant server.
pub struct RemoteQdrant {
    client: Qdrant,
    config: RemoteQdrantConfig,
    /// The collection's dimension once known.
    dimension: RwLock<Option<usize>>,
}

impl std::fmt::Debug for RemoteQdrant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteQdrant")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl RemoteQdrant {
    /// Connects to the server and checks that it answers (the collection is created by
    /// [`VectorStore::ensure_collection`]).
    pub async fn connect(config: RemoteQdrantConfig) -> Result<Self, VectorError> {
        let open_err = |e: QdrantError| VectorError::Open {
            target: config.url.clone(),
            reason: e.to_string(),
        };
        let client = Qdrant::from_url(&config.url)
            .api_key(config.api_key.clone())
            .timeout(Duration::from_secs(60))
            .connect_timeout(Duration::from_secs(10))
            .skip_compatibility_check()
            .build()
            .map_err(open_err)?;
        client.health_check().await.map_err(open_err)?;
        Ok(Self {
            client,
            config,
            dimension: RwLock::new(None),
        })
    }

    /// The settings.
    pub fn config(&self) -> &RemoteQdrantConfig {
        &self.config
    }

    /// Deletes the whole collection (for tests and tear-down); a missing collection is not an error.
    pub async fn drop_collection(&self) -> Result<(), VectorError> {
        self.set_dimension(None);
        if self.exists().await? {
            self.client
                .delete_collection(self.name())
                .await
                .map_err(backend)?;
        }
        Ok(())
    }

    fn name(&self) -> &str {
        &self.config.collection
    }

    fn set_dimension(&self, dimension: Option<usize>) {
        *self
            .dimension
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = dimension;
    }

    async fn exists(&self) -> Result<bool, VectorError> {
        self.client
            .collection_exists(self.name())
            .await
            .map_err(backend)
    }

    /// The collection's dimension, `None` when the collection does not exist.
    async fn dimension(&self) -> Result<Option<usize>, VectorError> {
        let cached = *self
            .dimension
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if cached.is_some() {
            return Ok(cached);
        }
        if !self.exists().await? {
            return Ok(None);
        }
        let dimension = self.remote_dimension().await?;
        self.set_dimension(Some(dimension));
        Ok(Some(dimension))
    }

    /// Reads the dimension of the collection's unnamed vector from the server.
    async fn remote_dimension(&self) -> Result<usize, VectorError> {
        let info = self
            .client
            .collection_info(self.name())
            .await
            .map_err(backend)?;
        let kind = info
            .result
            .and_then(|i| i.config)
            .and_then(|c| c.params)
            .and_then(|p| p.vectors_config)
            .and_then(|v| v.config);
        match kind {
            Some(VectorsConfigKind::Params(p)) => Ok(p.size as usize),
            _ => Err(VectorError::Backend(format!(
                "collection {} has no single unnamed vector",
                self.name()
            ))),
        }
    }

    /// The dimension, or an error when the collection does not exist.
    async fn require_dimension(&self) -> Result<usize, VectorError> {
        self.dimension().await?.ok_or_else(|| {
            VectorError::Backend(format!(
                "collection {} does not exist (call ensure_collection first)",
                self.name()
            ))
        })
    }
}

#[async_trait::async_trait]
impl VectorStore for RemoteQdrant {
    fn name(&self) -> &'static str {
        "qdrant"
    }

    async fn ensure_collection(&self, dimension: usize) -> Result<(), VectorError> {
        if dimension == 0 {
            return Err(VectorError::Backend(
                "the vector dimension must be positive".into(),
            ));
        }
        if !self.exists().await? {
            let create = CreateCollectionBuilder::new(self.name())
                .vectors_config(
                    VectorParamsBuilder::new(dimension as u64, Distance::Cosine)
                        .on_disk(self.config.on_disk),
                )
                .shard_number(self.config.shard_number)
                .replication_factor(self.config.replication_factor);
            if let Err(e) = self.client.create_collection(create).await {
                // Another client may have created it meanwhile; otherwise report the failure.
                if !self.exists().await? {
                    return Err(backend(e));
                }
            }
        }
        let expected = self.remote_dimension().await?;
        if expected != dimension {
            return Err(VectorError::Dimension {
                expected,
                got: dimension,
            });
        }
        // Idempotent on the server: creating an existing index is accepted.
        self.client
            .create_field_index(
                CreateFieldIndexCollectionBuilder::new(
                    self.name(),
                    DOCUMENT_ID_KEY,
                    FieldType::Keyword,
                )
                .wait(true),
            )
            .await
            .map_err(backend)?;
        self.set_dimension(Some(dimension));
        Ok(())
    }

    async fn upsert(&self, points: &[VectorPoint]) -> Result<(), VectorError> {
        if points.is_empty() {
            return Ok(());
        }
        check_points(points, self.require_dimension().await?)?;
        for chunk in points.chunks(UPSERT_CHUNK) {
            let batch: Vec<PointStruct> = chunk
                .iter()
                .map(|p| {
                    let payload =
                        Payload::from([(DOCUMENT_ID_KEY, Value::from(p.document_id.clone()))]);
                    PointStruct::new(point_id(p.passage_id), p.vector.clone(), payload)
                })
                .collect();
            self.client
                .upsert_points(UpsertPointsBuilder::new(self.name(), batch).wait(true))
                .await
                .map_err(backend)?;
        }
        Ok(())
    }

    async fn delete_document(&self, document_id: &str) -> Result<(), VectorError> {
        let filter = Filter::must([Condition::matches(DOCUMENT_ID_KEY, document_id.to_string())]);
        self.delete_by(filter).await
    }

    async fn clear(&self) -> Result<(), VectorError> {
        // An empty filter matches every point.
        self.delete_by(Filter::default()).await
    }

    async fn search(&self, vector: &[f32], top_k: usize) -> Result<Vec<(i64, f32)>, VectorError> {
        if top_k == 0 {
            return Ok(Vec::new());
        }
        let Some(expected) = self.dimension().await? else {
            return Ok(Vec::new());
        };
        if vector.len() != expected {
            return Err(VectorError::Dimension {
                expected,
                got: vector.len(),
            });
        }
        let request = QueryPointsBuilder::new(self.name())
            .query(Query::new_nearest(vector.to_vec()))
            .limit(top_k as u64)
            .with_payload(false);
        let response = self.client.query(request).await.map_err(backend)?;
        Ok(response
            .result
            .into_iter()
            .filter_map(|p| match p.id?.point_id_options? {
                PointIdOptions::Num(id) => Some((passage_id(id), p.score)),
                PointIdOptions::Uuid(_) => None,
            })
            .collect())
    }

    async fn count(&self) -> Result<u64, VectorError> {
        if self.dimension().await?.is_none() {
            return Ok(0);
        }
        let response = self
            .client
            .count(CountPointsBuilder::new(self.name()).exact(true))
            .await
            .map_err(backend)?;
        Ok(response.result.map_or(0, |r| r.count))
    }
}

impl RemoteQdrant {
    /// Deletes the points matching `filter` (nothing when the collection does not exist).
    async fn delete_by(&self, filter: Filter) -> Result<(), VectorError> {
        if self.dimension().await?.is_none() {
            return Ok(());
        }
        self.client
            .delete_points(
                DeletePointsBuilder::new(self.name())
                    .points(filter)
                    .wait(true),
            )
            .await
            .map_err(backend)?;
        Ok(())
    }
}

fn backend(e: QdrantError) -> VectorError {
    VectorError::Backend(e.to_string())
}
