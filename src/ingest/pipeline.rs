//! The ingestion pipeline: persisted jobs, processed in batches by one worker, resumable after a crash.
//!
//! One database transaction stores a batch's documents, their passages and the items' outcomes (falling back to
//! one transaction per item when the batch fails), so an item is either wholly done or still pending. Passages then go to the BM25 index, committed once per batch, after which the
//! documents are marked `indexed`; documents stored but not yet indexed when a process died are indexed again at
//! the next start ([`Pipeline::index_pending`]). Content hashes make re-ingestion a no-op.

use super::chunker::{chunk_text, ChunkConfig};
use super::loaders::LoadError;
use crate::graph::{GraphError, GraphIndex};
use crate::index::{DenseError, DenseIndex, IndexError, TextIndex};
use crate::metrics;
use crate::store::NewDocument;
use crate::store::{
    InsertOutcome, ItemStatus, JobCounts, JobItem, JobStatus, PassageRecord, Store, StoreError,
};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Items taken from the queue and committed to the index together.
const BATCH_ITEMS: i64 = 128;

/// Errors of the ingestion layer.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// An input could not be turned into documents.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The BM25 index failed.
    #[error(transparent)]
    Index(#[from] IndexError),
    /// Embedding or the vector store failed.
    #[error(transparent)]
    Dense(#[from] DenseError),
    /// Extraction or the knowledge graph failed.
    #[error(transparent)]
    Graph(#[from] GraphError),
    /// A job was submitted with no documents.
    #[error("no documents to ingest")]
    NoDocuments,
    /// A document's text or title holds a NUL character, which the databases cannot store.
    #[error("document {index} ('{title}') contains a NUL (U+0000) character; remove it (binary data is not text)")]
    NulCharacter {
        /// Position of the document in the submission, from 0.
        index: usize,
        /// Its title.
        title: String,
    },
    /// A blocking task panicked or was cancelled.
    #[error("background task failed: {0}")]
    Task(String),
}

/// SHA-256 (hex) of a document's title and text: the dedupe key. Metadata and source do not count.
pub fn content_hash(doc: &NewDocument) -> String {
    let mut h = Sha256::new();
    h.update(doc.title.as_bytes());
    h.update([0u8]);
    h.update(doc.text.as_bytes());
    hex::encode(h.finalize())
}

/// Stores, indexes and deletes documents; owns the job queue's worker.
#[derive(Debug, Clone)]
pub struct Pipeline {
    store: Store,
    index: Arc<TextIndex>,
    dense: Option<DenseIndex>,
    graph: Option<GraphIndex>,
    chunking: ChunkConfig,
    wake: Arc<Notify>,
}

impl Pipeline {
    /// A pipeline over a store, its BM25 index, its dense index (when embeddings are enabled) and its knowledge
    /// graph (when enabled).
    pub fn new(
        store: Store,
        index: Arc<TextIndex>,
        dense: Option<DenseIndex>,
        graph: Option<GraphIndex>,
        chunking: ChunkConfig,
    ) -> Self {
        Self {
            store,
            index,
            dense,
            graph,
            chunking,
            wake: Arc::new(Notify::new()),
        }
    }

    /// Persists a job for `documents` and wakes the worker; returns the job id.
    pub async fn submit(&self, documents: &[NewDocument]) -> Result<String, IngestError> {
        if documents.is_empty() {
            return Err(IngestError::NoDocuments);
        }
        if let Some(index) = documents
            .iter()
            .position(|d| d.text.contains('\0') || d.title.contains('\0'))
        {
            return Err(IngestError::NulCharacter {
                index,
                title: documents[index].title.chars().take(80).collect(),
            });
        }
        let id = self.store.create_job(documents).await?;
        metrics::JOBS_SUBMITTED.inc();
        self.wake.notify_one();
        Ok(id)
    }

    /// Runs the worker until `shutdown`: processes unfinished jobs (oldest first), then waits for new ones. An
    /// interrupted job stays `running` and resumes at the next start.
    pub async fn run_worker(self, shutdown: CancellationToken) {
        loop {
            match self.store.unfinished_jobs().await {
                Ok(jobs) => {
                    for job in jobs {
                        if shutdown.is_cancelled() {
                            return;
                        }
                        if let Err(e) = self.run_job(&job, &shutdown, &|_| {}).await {
                            tracing::error!(job = %job, error = %e, "ingestion job failed");
                            let _ = self
                                .store
                                .set_job_status(&job, JobStatus::Failed, Some(&e.to_string()))
                                .await;
                        }
                    }
                }
                Err(e) => tracing::error!(error = %e, "cannot read the job queue"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(std::time::Duration::from_secs(30)) => {}
            }
        }
    }

    /// Processes a job's pending items in batches, calling `progress` after each batch. Returns early (leaving the
    /// job `running`, to resume later) when `shutdown` is cancelled.
    pub async fn run_job(
        &self,
        job_id: &str,
        shutdown: &CancellationToken,
        progress: &(dyn Fn(&JobCounts) + Sync),
    ) -> Result<(), IngestError> {
        self.store
            .set_job_status(job_id, JobStatus::Running, None)
            .await?;
        loop {
            if shutdown.is_cancelled() {
                return Ok(());
            }
            let items = self.store.pending_items(job_id, BATCH_ITEMS).await?;
            if items.is_empty() {
                break;
            }
            let mut staged: Vec<PassageRecord> = Vec::new();
            let mut staged_docs: Vec<String> = Vec::new();
            for (doc_id, passages) in self.store_items(job_id, &items).await? {
                staged_docs.push(doc_id);
                staged.extend(passages);
            }
            self.index_passages(staged, &staged_docs, Some(job_id))
                .await?;
            if let Some(job) = self.store.get_job(job_id).await? {
                progress(&job.counts);
            }
        }
        self.store
            .set_job_status(job_id, JobStatus::Completed, None)
            .await?;
        Ok(())
    }

    /// Stores a batch of items: all in one transaction when that succeeds, else each in its own transaction so that
    /// one bad item cannot hold back the others. Returns the new documents' ids and passages, to be indexed.
    async fn store_items(
        &self,
        job_id: &str,
        items: &[JobItem],
    ) -> Result<Vec<(String, Vec<PassageRecord>)>, IngestError> {
        let spans: Vec<Vec<(usize, usize)>> = items
            .iter()
            .map(|i| {
                chunk_text(&i.document.text, &self.chunking)
                    .into_iter()
                    .map(|c| (c.start, c.end))
                    .collect()
            })
            .collect();
        let all: Vec<usize> = (0..items.len()).collect();
        let outcomes = match self.store_in_tx(job_id, items, &spans, &all).await {
            Ok(outcomes) => outcomes,
            Err(e) => {
                tracing::warn!(job = %job_id, error = %e, "batch failed; storing its items one by one");
                let mut outcomes = Vec::new();
                for i in all {
                    match self.store_in_tx(job_id, items, &spans, &[i]).await {
                        Ok(o) => outcomes.extend(o),
                        Err(e) => {
                            tracing::warn!(job = %job_id, seq = items[i].seq, error = %e, "item failed");
                            self.store
                                .fail_item(job_id, items[i].seq, "storage_error", &e.to_string())
                                .await?;
                        }
                    }
                }
                outcomes
            }
        };
        let mut stored = Vec::new();
        for (i, outcome) in outcomes {
            match outcome {
                InsertOutcome::Inserted {
                    document_id,
                    passage_ids,
                } => {
                    metrics::DOCUMENTS_INGESTED.inc();
                    metrics::PASSAGES_INGESTED.inc_by(passage_ids.len() as u64);
                    let doc = &items[i].document;
                    let passages = passage_ids
                        .iter()
                        .zip(&spans[i])
                        .enumerate()
                        .map(|(ordinal, (&id, &(start, end)))| PassageRecord {
                            id,
                            document_id: document_id.clone(),
                            ordinal: ordinal as i64,
                            title: doc.title.clone(),
                            text: doc.text[start..end].to_string(),
                            start_byte: start as i64,
                            end_byte: end as i64,
                        })
                        .collect();
                    stored.push((document_id, passages));
                }
                InsertOutcome::Duplicate { .. } => metrics::DOCUMENTS_DUPLICATE.inc(),
            }
        }
        Ok(stored)
    }

    /// Stores the items at `which` and their outcomes in one transaction; returns (item index, outcome) for each
    /// item that had text (items without any are recorded as failed with `empty_text`).
    async fn store_in_tx(
        &self,
        job_id: &str,
        items: &[JobItem],
        spans: &[Vec<(usize, usize)>],
        which: &[usize],
    ) -> Result<Vec<(usize, InsertOutcome)>, StoreError> {
        let mut tx = self.store.begin().await?;
        let mut outcomes = Vec::with_capacity(which.len());
        for &i in which {
            let item = &items[i];
            if spans[i].is_empty() {
                let error = Some(("empty_text", "the document has no text"));
                Store::finish_item(&mut tx, job_id, item.seq, ItemStatus::Failed, None, error)
                    .await?;
                continue;
            }
            let hash = content_hash(&item.document);
            let outcome = Store::insert_document(&mut tx, &item.document, &hash, &spans[i]).await?;
            let (status, doc_id) = match &outcome {
                InsertOutcome::Inserted { document_id, .. } => (ItemStatus::Done, document_id),
                InsertOutcome::Duplicate { document_id } => (ItemStatus::Duplicate, document_id),
            };
            Store::finish_item(&mut tx, job_id, item.seq, status, Some(doc_id), None).await?;
            outcomes.push((i, outcome));
        }
        tx.commit().await?;
        Ok(outcomes)
    }

    /// Embeds and stores passages' vectors (when enabled), extracts their triples into the graph (when enabled),
    /// adds them to the BM25 index, commits, and marks their documents indexed.
    async fn index_passages(
        &self,
        passages: Vec<PassageRecord>,
        document_ids: &[String],
        job: Option<&str>,
    ) -> Result<(), IngestError> {
        if document_ids.is_empty() {
            return Ok(());
        }
        if let Some(dense) = &self.dense {
            dense.index_passages(&passages).await?;
        }
        if let Some(graph) = &self.graph {
            graph.index_job_passages(&passages, job).await?;
        }
        let index = self.index.clone();
        tokio::task::spawn_blocking(move || -> Result<(), IndexError> {
            index.add_passages(&passages)?;
            index.commit()
        })
        .await
        .map_err(|e| IngestError::Task(e.to_string()))??;
        self.store.mark_indexed(document_ids).await?;
        Ok(())
    }

    /// Indexes documents that are stored but not marked indexed (left by a crash); returns how many.
    pub async fn index_pending(&self) -> Result<usize, IngestError> {
        let ids = self.store.unindexed_documents().await?;
        for batch in ids.chunks(256) {
            let mut passages = Vec::new();
            for id in batch {
                self.index.delete_document(id);
                if let Some(dense) = &self.dense {
                    dense.delete_document(id).await?;
                }
                if let Some(graph) = &self.graph {
                    graph.delete_document(id).await?;
                }
                passages.extend(self.store.passages_of(id).await?);
            }
            self.index_passages(passages, batch, None).await?;
        }
        if !ids.is_empty() {
            tracing::info!(
                documents = ids.len(),
                "indexed documents left from an earlier run"
            );
        }
        if let Some(graph) = &self.graph {
            graph.extract_missing().await?;
            graph.link_pending_phrases().await?;
        }
        Ok(ids.len())
    }

    /// Rebuilds the BM25 index, the vectors and the knowledge graph (re-extracting every passage) from the store;
    /// returns the number of passages indexed.
    pub async fn reindex_all(&self) -> Result<u64, IngestError> {
        self.index.clear()?;
        if let Some(dense) = &self.dense {
            dense.clear().await?;
        }
        if let Some(graph) = &self.graph {
            graph.clear().await?;
        }
        let mut after = 0i64;
        let mut total = 0u64;
        loop {
            let page = self.store.passages_after(after, 2048).await?;
            let Some(last) = page.last() else { break };
            after = last.id;
            total += page.len() as u64;
            self.index.add_passages(&page)?;
            if let Some(dense) = &self.dense {
                dense.index_passages(&page).await?;
                tracing::info!(passages = total, "re-embedded");
            }
            if let Some(graph) = &self.graph {
                graph.index_passages(&page).await?;
            }
        }
        let index = self.index.clone();
        tokio::task::spawn_blocking(move || index.commit())
            .await
            .map_err(|e| IngestError::Task(e.to_string()))??;
        let all: Vec<String> = self.store.unindexed_documents().await?;
        self.store.mark_indexed(&all).await?;
        Ok(total)
    }

    /// Deletes a document from the store and from every index; returns whether it existed.
    pub async fn delete_document(&self, id: &str) -> Result<bool, IngestError> {
        if !self.store.delete_document(id).await? {
            return Ok(false);
        }
        self.index.delete_document(id);
        let index = self.index.clone();
        tokio::task::spawn_blocking(move || index.commit())
            .await
            .map_err(|e| IngestError::Task(e.to_string()))??;
        if let Some(dense) = &self.dense {
            dense.delete_document(id).await?;
        }
        if let Some(graph) = &self.graph {
            graph.delete_document(id).await?;
        }
        metrics::DOCUMENTS_DELETED.inc();
        Ok(true)
    }

    /// The store this pipeline writes to.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The BM25 index this pipeline writes to.
    pub fn text_index(&self) -> &Arc<TextIndex> {
        &self.index
    }

    /// The knowledge graph this pipeline writes to, when enabled.
    pub fn graph(&self) -> Option<&GraphIndex> {
        self.graph.as_ref()
    }

    /// The dense index this pipeline writes to, when embeddings are enabled.
    pub fn dense_index(&self) -> Option<&DenseIndex> {
        self.dense.as_ref()
    }
}
