//! The running application: configuration, store, indexes, pipeline and retrievers, wired once and shared by the
//! HTTP server and the CLI.

use crate::config::Config;
use crate::index::{IndexError, TextIndex};
use crate::ingest::pipeline::Pipeline;
use crate::retrieve::bm25::Bm25Retriever;
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
        let pipeline = Pipeline::new(store.clone(), index.clone(), config.chunking);
        let retrievers =
            Retrievers::default().with(Arc::new(Bm25Retriever::new(index, store.clone())));
        tracing::info!(
            backend = store.backend().name(),
            data_dir = %dir.display(),
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
