//! The running application: configuration, store, indexes, pipeline and retrievers, wired once and shared by the
//! HTTP server and the CLI.

use crate::config::{Config, VectorBackend};
use crate::embed::bert::BertEmbedder;
use crate::embed::{EmbedError, Embedder};
use crate::graph::ExtractorChoice;
use crate::graph::{GraphError, GraphIndex, GraphVectors};
use crate::index::vectors::{
    EdgeVectorStore, RemoteQdrant, RemoteQdrantConfig, VectorError, VectorStore,
};
use crate::index::{DenseError, DenseIndex, IndexError, TextIndex};
use crate::ingest::pipeline::Pipeline;
use crate::openie::fallback::FallbackExtractor;
use crate::openie::import::{OpenIeTable, PrecomputedExtractor};
use crate::openie::llm::{LlmExtractor, LlmExtractorLimits};
use crate::openie::{Extractor, OpenIeError};
use crate::retrieve::bm25::Bm25Retriever;
use crate::retrieve::dense::DenseRetriever;
use crate::retrieve::hipporag::HippoRagRetriever;
use crate::retrieve::hipporag2::HippoRag2Retriever;
use crate::retrieve::hybrid::HybridRetriever;
use crate::retrieve::{Retriever, Retrievers};
use crate::server::admission::Admitted;
use crate::store::{Store, StoreError};
use engram_engine::{EngineConfig, Generator};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

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
    /// The precomputed extractions could not be read.
    #[error(transparent)]
    OpenIe(#[from] OpenIeError),
    /// The knowledge graph could not be loaded.
    #[error(transparent)]
    Graph(#[from] GraphError),
    /// The generation engine could not start (device, model, draft).
    #[error(transparent)]
    Engine(#[from] engram_engine::StartError),
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
    /// The knowledge graph, when enabled.
    pub graph: Option<GraphIndex>,
    /// The generation engine, when a model is configured.
    pub generator: Option<Arc<dyn Generator>>,
    /// Cancelled when the server's shutdown grace period runs out: streams still open then end with an error
    /// event.
    pub streams_cut: CancellationToken,
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
        let generator = match &config.engine.model {
            Some(spec) => Some(open_engine(spec, &config.engine).await?),
            None => None,
        };
        let graph = if config.graph.enabled {
            Some(open_graph(&config, &store, dense.as_ref(), generator.as_ref()).await?)
        } else {
            None
        };
        // Requests from clients (chat, completions, QA) are admitted up to the engine's capacity; the graph's
        // extractor (above) submits to the engine directly.
        let generator = generator.map(|g| {
            let limit = config.engine.max_sequences + config.engine.max_waiting;
            Arc::new(Admitted::new(g, limit)) as Arc<dyn Generator>
        });
        let pipeline = Pipeline::new(
            store.clone(),
            index.clone(),
            dense.clone(),
            graph.clone(),
            config.chunking,
        )
        .with_delete_wait(std::time::Duration::from_secs(
            config.server.delete_wait_secs,
        ));
        let bm25: Arc<dyn Retriever> = Arc::new(Bm25Retriever::new(index.clone(), store.clone()));
        let mut retrievers = Retrievers::default().with(bm25.clone());
        let mut graph_fallback = bm25;
        if let Some(dense) = &dense {
            let dense_retriever: Arc<dyn Retriever> =
                Arc::new(DenseRetriever::new(dense.clone(), store.clone()));
            graph_fallback = dense_retriever.clone();
            retrievers = retrievers
                .with(dense_retriever)
                .with(Arc::new(HybridRetriever::new(
                    index,
                    dense.clone(),
                    store.clone(),
                    config.retrieval.hybrid,
                )));
        }
        if let Some(graph) = &graph {
            retrievers = retrievers.with(Arc::new(HippoRagRetriever::new(
                graph.clone(),
                store.clone(),
                graph_fallback,
            )));
            if let (Some(dense), Some(_)) = (&dense, graph.vectors()) {
                retrievers = retrievers.with(Arc::new(HippoRag2Retriever::new(
                    graph.clone(),
                    dense.clone(),
                    store.clone(),
                )));
            }
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
            graph,
            generator,
            streams_cut: CancellationToken::new(),
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

/// Starts the generation engine for `spec` as `config` says (device, draft model), off the async threads.
async fn open_engine(spec: &str, config: &EngineConfig) -> Result<Arc<dyn Generator>, StartError> {
    let spec = spec.to_string();
    let config = config.clone();
    let started = std::time::Instant::now();
    let engine = tokio::task::spawn_blocking(move || engram_engine::open_engine(&spec, &config))
        .await
        .map_err(|e| StartError::Task(e.to_string()))??;
    tracing::info!(
        model = engine.model_name(),
        load_ms = started.elapsed().as_millis() as u64,
        "generation model loaded"
    );
    Ok(Arc::new(engine))
}

/// The configured extractor ([`ExtractorChoice`]): the LLM's or the rule-based fallback, behind precomputed
/// extractions when `graph.openie_file` is set (passages they lack go to the other one).
fn build_extractor(
    config: &Config,
    generator: Option<&Arc<dyn Generator>>,
) -> Result<Arc<dyn Extractor>, StartError> {
    let synthetic = config
        .engine
        .model
        .as_deref()
        .is_some_and(|m| m.starts_with("synthetic:"));
    let use_llm = match config.graph.extractor {
        ExtractorChoice::Fallback => false,
        ExtractorChoice::Auto => generator.is_some() && !synthetic,
        ExtractorChoice::Llm => true,
    };
    let base: Arc<dyn Extractor> =
        match (use_llm, generator) {
            (true, Some(g)) => {
                let limits = LlmExtractorLimits {
                    max_tokens: config.graph.llm_max_tokens,
                    ..LlmExtractorLimits::default()
                };
                Arc::new(LlmExtractor::new(g.clone(), limits)?)
            }
            (true, None) => return Err(StartError::OpenIe(OpenIeError::Extract(
                "graph.extractor = \"llm\" needs a generation model: set engine.model (--model)"
                    .into(),
            ))),
            (false, _) => Arc::new(FallbackExtractor::default()),
        };
    tracing::info!(extractor = base.name(), "open-IE extractor chosen");
    let Some(path) = &config.graph.openie_file else {
        return Ok(base);
    };
    let table = OpenIeTable::load(path)?;
    tracing::info!(file = %path.display(), stats = ?table.stats, "precomputed extractions loaded");
    Ok(Arc::new(PrecomputedExtractor::new(Arc::new(table), base)))
}

/// Opens the knowledge graph, with phrase and fact vector stores beside the passage vectors when embeddings are
/// enabled.
async fn open_graph(
    config: &Config,
    store: &Store,
    dense: Option<&DenseIndex>,
    generator: Option<&Arc<dyn Generator>>,
) -> Result<GraphIndex, StartError> {
    let extractor = build_extractor(config, generator)?;
    let vectors = match dense {
        Some(d) => Some(GraphVectors {
            embedder: d.embedder().clone(),
            phrases: open_vectors(config, "phrases").await?,
            facts: open_vectors(config, "facts").await?,
        }),
        None => None,
    };
    Ok(GraphIndex::open(store.clone(), extractor, vectors, config.graph.clone()).await?)
}

/// Opens the configured vector store for one kind of point: `passages` (DATA_DIR/vectors or the configured
/// collection), or another kind beside it (DATA_DIR/vectors-KIND or the collection COLLECTION_KIND).
async fn open_vectors(config: &Config, kind: &str) -> Result<Arc<dyn VectorStore>, StartError> {
    let suffix = if kind == "passages" {
        String::new()
    } else {
        format!("-{kind}")
    };
    Ok(match config.vectors.backend {
        VectorBackend::Edge => Arc::new(EdgeVectorStore::open(
            &config.storage.data_dir.join(format!("vectors{suffix}")),
        )?),
        VectorBackend::Qdrant => {
            let mut qdrant: RemoteQdrantConfig = config.vectors.qdrant.clone();
            if kind != "passages" {
                qdrant.collection = format!("{}_{kind}", qdrant.collection);
            }
            Arc::new(RemoteQdrant::connect(qdrant).await?)
        }
    })
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
    let vectors = open_vectors(config, "passages").await?;
    Ok(DenseIndex::open(embedder, vectors).await?)
}
