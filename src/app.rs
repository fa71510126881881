//! The running application: configuration, store, indexes, pipeline and retrievers, wired once and shared by the
//! HTTP server and the CLI.

use crate::config::{Config, VectorBackend};
use crate::embed::bert::BertEmbedder;
use crate::embed::{EmbedError, Embedder};
use crate::index::vectors::{EdgeVectorStore, RemoteQdrant, VectorError, VectorStore};
use crate::index::{DenseError, DenseIndex, IndexError, TextIndex};
use crate::ingest::pipeline::Pipeline;
use crate::retrieve::bm25::Bm25Retriever;
use crate::retrieve::dense::DenseRetriever;
use crate::retrieve::hybrid::HybridRetriever;
use crate::retrieve::Retrievers;
use crate::store::{Store, StoreError};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Why the application could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The data directory could not be created.
    #[error("cannot create the data directory {dir}: {source}")]
    DataDir {
        /// The directory.
        dir: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The database could not be opened or migrated.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The BM25 index could not be opened.
    #[error(transparent)]
    Index(#[from] IndexError),
    /// The embedding model could not be loaded.
    #[error(transparent)]
    Embed(#[from] EmbedError),
    /// The vector store could not be opened.
    #[error(transparent)]
    Vector(#[from] VectorError),
    /// The dense index could not be set up.
    #[error(transparent)]
    Dense(#[from] DenseError),
    /// A start-up task panicked.
    #[error("start-up task failed: {0}")]
    Task(String),
}

/// Everything a request or a command needs.
#[derive(Debug)]
pub struct App {
    /// The validated configuration.
    pub config: Config,
    /// The database.
    pub store: Store,
    /// Ingestion, indexing and deletion.
    pub pipeline: Pipeline,
    /// Retrieval methods by name.
    pub retrievers: Retrievers,
    ready: AtomicBool,
}

impl App {
    /// Creates the data directory, opens and migrates the database (PostgreSQL when `storage.database_url` is set,
    /// else SQLite in the data directory) and opens the BM25 index.
    pub async fn open(config: Config) -> Result<Arc<App>, StartError> {
        let dir = &config.storage.data_dir;
        std::fs::create_dir_all(dir).map_err(|source| StartError::DataDir {
            dir: dir.display().to_string(),
            source,
        })?;
        let store = match &config.storage.database_url {
            Some(url) => Store::connect(url).await?,
            None => Store::open_sqlite(dir).await?,
        };
        let index = Arc::new(TextIndex::open(&dir.join("tantivy"))?);
        let dense = if config.embedding.enabled {
            Some(open_dense(&config).await?)
        } else {
            None
        };
        let pipeline = Pipeline::new(store.clone(), index.clone(), dense.clone(), config.chunking);
        let mut retrievers =
            Retrievers::default().with(Arc::new(Bm25Retriever::new(index.clone(), store.clone())));
        if let Some(dense) = dense {
            retrievers = retrievers
                .with(Arc::new(DenseRetriever::new(dense.clone(), store.clone())))
                .with(Arc::new(HybridRetriever::new(
                    index,
                    dense,
                    store.clone(),
                    config.retrieval.hybrid,
                )));
        }
        tracing::info!(
            backend = store.backend().name(),
            data_dir = %dir.display(),
            retrievers = ?retrievers.names(),
            "store and indexes open"
        );
        Ok(Arc::new(App {
            config,
            store,
            pipeline,
            retrievers,
            ready: AtomicBool::new(false),
        }))
    }

    /// Whether start-up work (recovering unindexed documents) has finished.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Marks start-up work as finished.
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }
}

impl App {
    /// Number of passages visible in the BM25 index.
    pub fn text_index_len(&self) -> u64 {
        self.pipeline.text_index().num_passages()
    }
}

/// Loads the embedding model and opens the configured vector store.
async fn open_dense(config: &Config) -> Result<DenseIndex, StartError> {
    let model_dir = config.embedding.model_dir.clone();
    let batch = config.embedding.batch_size;
    let started = std::time::Instant::now();
    let embedder: Arc<dyn Embedder> = Arc::new(
        tokio::task::spawn_blocking(move || BertEmbedder::load(&model_dir, batch))
            .await
            .map_err(|e| StartError::Task(e.to_string()))??,
    );
    tracing::info!(
        model = embedder.model_name(),
        dimension = embedder.dimension(),
        load_ms = started.elapsed().as_millis() as u64,
        "embedding model loaded"
    );
    let vectors: Arc<dyn VectorStore> = match config.vectors.backend {
        VectorBackend::Edge => Arc::new(EdgeVectorStore::open(
            &config.storage.data_dir.join("vectors"),
        )?),
        VectorBackend::Qdrant => {
            Arc::new(RemoteQdrant::connect(config.vectors.qdrant.clone()).await?)
        }
    };
    Ok(DenseIndex::open(embedder, vectors).await?)
}
