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
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;
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
    /// The document is being indexed, and stayed so longer than the delete may wait.
    #[error("document '{0}' is being indexed; retry in a moment")]
    Busy(String),
}

/// Documents being indexed and documents being deleted: a document is never in both, so a delete never races
/// the indexing of the same document (which would leave vectors, passages or triples of a deleted document).
#[derive(Debug, Default)]
struct Claims {
    indexing: HashSet<String>,
    deleting: HashSet<String>,
}

/// The claims, and a signal sent whenever one is given back.
#[derive(Debug, Default)]
struct ClaimBoard {
    claims: Mutex<Claims>,
    released: Notify,
}

impl ClaimBoard {
    fn lock(&self) -> std::sync::MutexGuard<'_, Claims> {
        self.claims
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Documents claimed for indexing; given back when dropped (also on error or panic).
struct IndexClaim {
    board: Arc<ClaimBoard>,
    ids: Vec<String>,
}

impl Drop for IndexClaim {
    fn drop(&mut self) {
        let mut claims = self.board.lock();
        for id in &self.ids {
            claims.indexing.remove(id);
        }
        drop(claims);
        self.board.released.notify_waiters();
    }
}

/// A document claimed for deletion; given back when dropped.
struct DeleteClaim {
    board: Arc<ClaimBoard>,
    id: String,
}

impl Drop for DeleteClaim {
    fn drop(&mut self) {
        self.board.lock().deleting.remove(&self.id);
        self.board.released.notify_waiters();
    }
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
    board: Arc<ClaimBoard>,
    delete_wait: Duration,
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
            board: Arc::default(),
            delete_wait: Duration::from_secs(30),
        }
    }

    /// How long a delete waits for the indexing of its document to finish (then [`IngestError::Busy`]).
    pub fn with_delete_wait(mut self, wait: Duration) -> Self {
        self.delete_wait = wait;
        self
    }

    /// Claims `ids` for indexing, leaving out documents being deleted and documents no longer stored (deleted
    /// since they were stored); the claim holds off their deletion until it is dropped.
    async fn claim_for_indexing(&self, ids: &[String]) -> Result<IndexClaim, IngestError> {
        let mut claim = IndexClaim {
            board: self.board.clone(),
            ids: Vec::with_capacity(ids.len()),
        };
        {
            let mut claims = self.board.lock();
            for id in ids {
                if !claims.deleting.contains(id) && claims.indexing.insert(id.clone()) {
                    claim.ids.push(id.clone());
                }
            }
        }
        let existing: HashSet<String> = self
            .store
            .existing_documents(&claim.ids)
            .await?
            .into_iter()
            .collect();
        let (kept, gone): (Vec<String>, Vec<String>) =
            claim.ids.drain(..).partition(|id| existing.contains(id));
        claim.ids = kept;
        drop(IndexClaim {
            board: self.board.clone(),
            ids: gone,
        });
        Ok(claim)
    }

    /// Claims `id` for deletion, waiting (up to the delete wait) while it is being indexed or deleted.
    async fn claim_for_deletion(&self, id: &str) -> Result<DeleteClaim, IngestError> {
        let deadline = tokio::time::Instant::now() + self.delete_wait;
        loop {
            let released = self.board.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            {
                let mut claims = self.board.lock();
                if !claims.indexing.contains(id) && claims.deleting.insert(id.to_string()) {
                    return Ok(DeleteClaim {
                        board: self.board.clone(),
                        id: id.to_string(),
                    });
                }
            }
            if tokio::time::timeout_at(deadline, released).await.is_err() {
                return Err(IngestError::Busy(id.to_string()));
            }
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
                        self.run_job_caught(&job, &shutdown).await;
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

    /// Runs a job for the worker: an error or a panic marks the job failed, and its items still pending failed
    /// with `job_failed` (so nothing stays pending forever); the worker goes on with the next job.
    async fn run_job_caught(&self, job: &str, shutdown: &CancellationToken) {
        use futures::FutureExt;
        let no_progress = |_: &JobCounts| {};
        let run = std::panic::AssertUnwindSafe(self.run_job(job, shutdown, &no_progress));
        let message = match run.catch_unwind().await {
            Ok(Ok(())) => return,
            Ok(Err(e)) => e.to_string(),
            Err(panic) => {
                metrics::PANICS.inc();
                format!(
                    "internal error: the job panicked: {}",
                    super::loaders::panic_message(&*panic)
                )
            }
        };
        tracing::error!(job = %job, error = %message, "ingestion job failed");
        if let Err(e) = self
            .store
            .fail_pending_items(job, "job_failed", &message)
            .await
        {
            tracing::error!(job = %job, error = %e, "cannot mark the failed job's items");
        }
        let _ = self
            .store
            .set_job_status(job, JobStatus::Failed, Some(&message))
            .await;
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
            let stored = self.store_items(job_id, &items).await?;
            let ids: Vec<String> = stored.iter().map(|(id, _)| id.clone()).collect();
            // Documents deleted since they were stored are left out; the others cannot be deleted until the
            // claim is dropped, after they are indexed.
            let claim = self.claim_for_indexing(&ids).await?;
            let staged: Vec<PassageRecord> = stored
                .into_iter()
                .filter(|(id, _)| claim.ids.contains(id))
                .flat_map(|(_, passages)| passages)
                .collect();
            self.index_passages(staged, &claim.ids, Some(job_id))
                .await?;
            drop(claim);
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

    /// Indexes documents that are stored but not marked indexed (left by a crash), extracts passages without
    /// extractions, links new phrases and repairs the fact vectors; returns how many documents it indexed. The
    /// server runs it in the background at start (`checks.recovery` of `/readyz`).
    pub async fn index_pending(&self) -> Result<usize, IngestError> {
        let ids = self.store.unindexed_documents().await?;
        for batch in ids.chunks(256) {
            let claim = self.claim_for_indexing(batch).await?;
            let mut passages = Vec::new();
            for id in &claim.ids {
                self.index.delete_document(id);
                if let Some(dense) = &self.dense {
                    dense.delete_document(id).await?;
                }
                if let Some(graph) = &self.graph {
                    graph.delete_document(id).await?;
                }
                passages.extend(self.store.passages_of(id).await?);
            }
            self.index_passages(passages, &claim.ids, None).await?;
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
            if graph.repair_fact_vectors().await? {
                tracing::info!("re-embedded the facts, whose vectors did not match the triples");
            }
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

    /// Deletes a document from the store and from every index; returns whether it existed. While the worker
    /// indexes the document, waits for it to finish (up to the delete wait, then [`IngestError::Busy`]), so that
    /// no vector, passage or triple of the document is left behind.
    pub async fn delete_document(&self, id: &str) -> Result<bool, IngestError> {
        let _claim = self.claim_for_deletion(id).await?;
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
