//! Keeps the knowledge graph in step with the store: extraction at ingestion, phrase vectors and synonym edges,
//! fact vectors (for HippoRAG 2's query-to-triple matching), removal on delete, and loading at start.

use super::knowledge::{KnowledgeGraph, Snapshot};
use super::GraphConfig;
use crate::embed::{EmbedError, Embedder};
use crate::index::vectors::{VectorError, VectorPoint, VectorStore};
use crate::openie::{Extraction, Extractor, OpenIeError, PassageInput};
use crate::store::{PassageRecord, Store, StoreError, TripleRow};
use std::collections::HashMap;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Phrases embedded and linked per round.
const LINK_CHUNK: i64 = 512;
/// Facts embedded per call.
const FACT_CHUNK: usize = 512;
/// Passages handed to the extractor per call (progress and the cache advance per round).
const EXTRACT_ROUND: usize = 64;
/// Payload document id of phrase vectors (phrases belong to no document).
const PHRASE_DOCUMENT: &str = "";

/// The cache key of a passage's content: SHA-256 (hex) of its title, a newline and its text.
pub fn content_hash(title: &str, text: &str) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(title.as_bytes());
    h.update(b"\n");
    h.update(text.as_bytes());
    hex::encode(h.finalize())
}

/// Errors of the graph layer.
#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Extraction failed.
    #[error(transparent)]
    OpenIe(#[from] OpenIeError),
    /// Embedding phrases or facts failed.
    #[error(transparent)]
    Embed(#[from] EmbedError),
    /// The phrase or fact vectors failed.
    #[error(transparent)]
    Vector(#[from] VectorError),
    /// A blocking task panicked or was cancelled.
    #[error("graph task failed: {0}")]
    Task(String),
}

/// The embedder and vector stores the graph uses when embeddings are enabled.
#[derive(Debug, Clone)]
pub struct GraphVectors {
    /// Embeds phrases, facts and questions.
    pub embedder: Arc<dyn Embedder>,
    /// One point per phrase (point id = phrase id).
    pub phrases: Arc<dyn VectorStore>,
    /// One point per triple, embedded as `subject relation object` (point id = triple id).
    pub facts: Arc<dyn VectorStore>,
}

impl GraphVectors {
    /// Embeds texts on a blocking thread.
    pub async fn embed(&self, texts: Vec<String>) -> Result<Vec<Vec<f32>>, GraphError> {
        let embedder = self.embedder.clone();
        let out = crate::cpu::run(move || {
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            embedder.embed(&refs)
        })
        .await
        .map_err(|e| GraphError::Task(e.to_string()))??;
        Ok(out.into_iter().map(|e| e.vector).collect())
    }
}

/// The knowledge graph of a deployment and what keeps it current.
#[derive(Debug, Clone)]
pub struct GraphIndex {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Store,
    extractor: Arc<dyn Extractor>,
    vectors: Option<GraphVectors>,
    graph: RwLock<KnowledgeGraph>,
    config: GraphConfig,
}

/// The text a fact is embedded as.
pub fn fact_text(subject: &str, relation: &str, object: &str) -> String {
    format!("{subject} {relation} {object}")
}

impl GraphIndex {
    /// Opens the graph: creates the vector collections and loads the graph from the store. Facts whose vectors
    /// are missing (a crash between storing triples and their vectors, or embeddings enabled after the triples were
    /// stored) are embedded later, by [`Self::repair_fact_vectors`] in the background recovery, so that a restart
    /// is not held up by them.
    pub async fn open(
        store: Store,
        extractor: Arc<dyn Extractor>,
        vectors: Option<GraphVectors>,
        config: GraphConfig,
    ) -> Result<Self, GraphError> {
        if let Some(v) = &vectors {
            let dim = v.embedder.dimension();
            v.phrases.ensure_collection(dim).await?;
            v.facts.ensure_collection(dim).await?;
        }
        let started = std::time::Instant::now();
        let rows = store.graph_rows().await?;
        let graph = KnowledgeGraph::from_rows(rows);
        tracing::info!(stats = ?graph.stats(), load_ms = started.elapsed().as_millis() as u64, "knowledge graph loaded");
        Ok(Self {
            inner: Arc::new(Inner {
                store,
                extractor,
                vectors,
                graph: RwLock::new(graph),
                config,
            }),
        })
    }

    /// Re-embeds every fact when the fact vectors do not match the stored triples in number; returns whether it
    /// did.
    pub async fn repair_fact_vectors(&self) -> Result<bool, GraphError> {
        let Some(v) = &self.inner.vectors else {
            return Ok(false);
        };
        let (_, triples, _) = self.inner.store.graph_counts().await?;
        if v.facts.count().await? == triples as u64 {
            return Ok(false);
        }
        self.reembed_facts().await?;
        Ok(true)
    }

    /// The settings.
    pub fn config(&self) -> &GraphConfig {
        &self.inner.config
    }

    /// The extractor used at ingestion.
    pub fn extractor(&self) -> &Arc<dyn Extractor> {
        &self.inner.extractor
    }

    /// The embedder and vector stores, when embeddings are enabled.
    pub fn vectors(&self) -> Option<&GraphVectors> {
        self.inner.vectors.as_ref()
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// Read access to the graph.
    pub fn read(&self) -> RwLockReadGuard<'_, KnowledgeGraph> {
        self.inner.graph.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, KnowledgeGraph> {
        self.inner.graph.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The current compact snapshot (rebuilt after changes).
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.write().snapshot()
    }

    /// Extracts triples from passages, stores them, links new phrases (vectors and synonym edges), embeds the new
    /// facts and adds the passages to the graph. Safe to re-run for the same passages.
    pub async fn index_passages(&self, passages: &[PassageRecord]) -> Result<(), GraphError> {
        self.index_job_passages(passages, None).await
    }

    /// [`GraphIndex::index_passages`] for an ingestion job: its record names the extractor and counts the
    /// passages extracted as extraction proceeds.
    pub async fn index_job_passages(
        &self,
        passages: &[PassageRecord],
        job: Option<&str>,
    ) -> Result<(), GraphError> {
        if passages.is_empty() {
            return Ok(());
        }
        let extractions = self.extract(passages, job).await?;
        let items: Vec<(i64, Extraction)> =
            passages.iter().map(|p| p.id).zip(extractions).collect();
        let saved = self
            .inner
            .store
            .save_extractions(self.inner.extractor.name(), &items)
            .await?;
        {
            let mut g = self.write();
            for (id, text) in &saved.phrases {
                g.add_phrase(*id, text.clone());
            }
        }
        self.link_pending_phrases().await?;
        self.embed_facts(&saved.triples).await?;
        let mut by_passage: HashMap<i64, Vec<TripleRow>> = HashMap::new();
        for t in saved.triples {
            by_passage.entry(t.passage_id).or_default().push(t);
        }
        let mut g = self.write();
        for p in passages {
            let triples = by_passage.remove(&p.id).unwrap_or_default();
            g.add_passage(p.id, &p.document_id, triples);
        }
        Ok(())
    }

    /// Extractions of `passages`, in order: from the cache when the extractor is [`Extractor::cacheable`] (by
    /// content hash and extractor name), the rest from the extractor in rounds of [`EXTRACT_ROUND`] passages,
    /// each cached and counted in `job` as it finishes; each then [`Extractor::refine`]d (the cache keeps the
    /// extractor's own output, so a better refinement needs no new extraction).
    async fn extract(
        &self,
        passages: &[PassageRecord],
        job: Option<&str>,
    ) -> Result<Vec<Extraction>, GraphError> {
        let extractor = self.inner.extractor.clone();
        let name = extractor.name().to_string();
        let store = &self.inner.store;
        let hashes: Vec<String> = passages
            .iter()
            .map(|p| content_hash(&p.title, &p.text))
            .collect();
        let mut found = if extractor.cacheable() {
            store.cached_extractions(&name, &hashes).await?
        } else {
            HashMap::new()
        };
        let mut out: Vec<Option<Extraction>> = hashes.iter().map(|h| found.remove(h)).collect();
        let cached = out.iter().filter(|e| e.is_some()).count();
        if let Some(job) = job {
            store.add_job_extracted(job, &name, cached as i64).await?;
        }
        let missing: Vec<usize> = (0..out.len()).filter(|&i| out[i].is_none()).collect();
        for round in missing.chunks(EXTRACT_ROUND) {
            let owned: Vec<(String, String)> = round
                .iter()
                .map(|&i| (passages[i].title.clone(), passages[i].text.clone()))
                .collect();
            let ex = extractor.clone();
            let got: Vec<Extraction> = tokio::task::spawn_blocking(move || {
                let inputs: Vec<PassageInput<'_>> = owned
                    .iter()
                    .map(|(title, text)| PassageInput { title, text })
                    .collect();
                ex.extract(&inputs)
            })
            .await
            .map_err(|e| GraphError::Task(e.to_string()))??;
            if got.len() != round.len() {
                return Err(GraphError::OpenIe(OpenIeError::Extract(format!(
                    "{} returned {} extractions for {} passages",
                    name,
                    got.len(),
                    round.len()
                ))));
            }
            if extractor.cacheable() {
                let items: Vec<(String, Extraction)> = round
                    .iter()
                    .zip(&got)
                    .map(|(&i, e)| (hashes[i].clone(), e.clone()))
                    .collect();
                store.cache_extractions(&name, &items).await?;
            }
            if let Some(job) = job {
                store
                    .add_job_extracted(job, &name, round.len() as i64)
                    .await?;
            }
            for (&i, e) in round.iter().zip(got) {
                out[i] = Some(e);
            }
        }
        Ok(out
            .into_iter()
            .map(|e| extractor.refine(e.unwrap_or_default()))
            .collect())
    }

    /// Extracts every stored passage that has no extraction yet (documents stored before the graph existed, or
    /// left by a crash); returns how many.
    pub async fn extract_missing(&self) -> Result<usize, GraphError> {
        let mut after = 0;
        let mut total = 0;
        loop {
            let page = self
                .inner
                .store
                .passages_without_extraction(after, 256)
                .await?;
            let Some(last) = page.last() else { break };
            after = last.id;
            total += page.len();
            self.index_passages(&page).await?;
        }
        if total > 0 {
            tracing::info!(
                passages = total,
                "extracted passages left from an earlier run"
            );
        }
        Ok(total)
    }

    /// Embeds phrases not yet linked, stores their vectors, finds their synonyms (nearest phrases with cosine at
    /// least `synonym_threshold`, phrases of more than two alphanumeric characters only) and records the edges.
    /// Without embeddings, nothing happens. Returns the number of phrases linked.
    pub async fn link_pending_phrases(&self) -> Result<usize, GraphError> {
        let Some(v) = &self.inner.vectors else {
            return Ok(0);
        };
        let (threshold, k) = (
            self.inner.config.synonym_threshold,
            self.inner.config.synonym_neighbors,
        );
        let mut linked = 0;
        loop {
            let batch = self.inner.store.unlinked_phrases(LINK_CHUNK).await?;
            if batch.is_empty() {
                break;
            }
            let vectors = v.embed(batch.iter().map(|p| p.1.clone()).collect()).await?;
            let points: Vec<VectorPoint> = batch
                .iter()
                .zip(&vectors)
                .map(|((id, _), vector)| VectorPoint {
                    passage_id: *id,
                    document_id: PHRASE_DOCUMENT.to_string(),
                    vector: vector.clone(),
                })
                .collect();
            v.phrases.upsert(&points).await?;
            let mut edges = Vec::new();
            for ((id, text), vector) in batch.iter().zip(&vectors) {
                if text.chars().filter(|c| c.is_ascii_alphanumeric()).count() <= 2 {
                    continue;
                }
                for (other, score) in v.phrases.search(vector, k + 1).await? {
                    if other != *id && score >= threshold {
                        edges.push((*id, other, f64::from(score)));
                    }
                }
            }
            let ids: Vec<i64> = batch.iter().map(|p| p.0).collect();
            self.inner.store.link_phrases(&ids, &edges).await?;
            self.write().add_synonyms(&edges);
            linked += ids.len();
        }
        Ok(linked)
    }

    /// Embeds and stores the vectors of facts.
    async fn embed_facts(&self, triples: &[TripleRow]) -> Result<(), GraphError> {
        let Some(v) = &self.inner.vectors else {
            return Ok(());
        };
        for chunk in triples.chunks(FACT_CHUNK) {
            let texts: Vec<String> = {
                let g = self.read();
                chunk
                    .iter()
                    .map(|t| {
                        fact_text(
                            g.phrase_text(t.subject_id).unwrap_or_default(),
                            &t.relation,
                            g.phrase_text(t.object_id).unwrap_or_default(),
                        )
                    })
                    .collect()
            };
            let vectors = v.embed(texts).await?;
            let points: Vec<VectorPoint> = chunk
                .iter()
                .zip(vectors)
                .map(|(t, vector)| VectorPoint {
                    passage_id: t.id,
                    document_id: t.document_id.clone(),
                    vector,
                })
                .collect();
            v.facts.upsert(&points).await?;
        }
        Ok(())
    }

    /// Replaces every fact vector with a fresh embedding of the stored triples.
    async fn reembed_facts(&self) -> Result<(), GraphError> {
        let Some(v) = &self.inner.vectors else {
            return Ok(());
        };
        v.facts.clear().await?;
        v.facts.ensure_collection(v.embedder.dimension()).await?;
        let triples = self.inner.store.graph_rows().await?.triples;
        tracing::info!(facts = triples.len(), "embedding facts");
        self.embed_facts(&triples).await
    }

    /// Removes a document's passages from the graph and its facts' vectors (the store deletes the rows).
    pub async fn delete_document(&self, document_id: &str) -> Result<(), GraphError> {
        self.write().remove_document(document_id);
        if let Some(v) = &self.inner.vectors {
            v.facts.delete_document(document_id).await?;
        }
        Ok(())
    }

    /// Forgets every extraction, vector and synonym edge, ready for re-extraction of every passage.
    pub async fn clear(&self) -> Result<(), GraphError> {
        self.inner.store.clear_extractions().await?;
        self.inner.store.unlink_all_phrases().await?;
        if let Some(v) = &self.inner.vectors {
            let dim = v.embedder.dimension();
            for s in [&v.phrases, &v.facts] {
                s.clear().await?;
                s.ensure_collection(dim).await?;
            }
        }
        *self.write() = KnowledgeGraph::from_rows(self.inner.store.graph_rows().await?);
        Ok(())
    }
}
