//! The ingestion pipeline: persisted jobs, processed in batches by one worker, resumable after a crash.
//!
//! Per item, one database transaction stores the document, its passages and the item's outcome, so an item is
//! either wholly done or still pending. Passages then go to the BM25 index, committed once per batch, after which the
//! documents are marked `indexed`; documents stored but not yet indexed when a process died are indexed again at
//! the next start ([`Pipeline::index_pending`]). Content hashes make re-ingestion a no-op.

use super::chunker::{chunk_text, ChunkConfig};
use super::document::NewDocument;
use super::loaders::LoadError;
use crate::index::{IndexError, TextIndex};
use crate::metrics;
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
    /// A job was submitted with no documents.
    #[error("no documents to ingest")]
    NoDocuments,
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
    chunking: ChunkConfig,
    wake: Arc<Notify>,
}

impl Pipeline {
    /// A pipeline over a store and its text index.
    pub fn new(store: Store, index: Arc<TextIndex>, chunking: ChunkConfig) -> Self {
        Self {
            store,
            index,
            chunking,
            wake: Arc::new(Notify::new()),
        }
    }

    /// Persists a job for `documents` and wakes the worker; returns the job id.
    pub async fn submit(&self, documents: &[NewDocument]) -> Result<String, IngestError> {
        if documents.is_empty() {
            return Err(IngestError::NoDocuments);
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
            for item in &items {
                if let Some((doc_id, passages)) = self.store_item(job_id, item).await? {
                    staged_docs.push(doc_id);
                    staged.extend(passages);
                }
            }
            self.index_passages(staged, &staged_docs).await?;
            if let Some(job) = self.store.get_job(job_id).await? {
                progress(&job.counts);
            }
        }
        self.store
            .set_job_status(job_id, JobStatus::Completed, None)
            .await?;
        Ok(())
    }

    /// Stores one item in its own transaction. Returns the new document's id and passages to index, or `None`
    /// for a duplicate or a failed item (whose outcome is recorded).
    async fn store_item(
        &self,
        job_id: &str,
        item: &JobItem,
    ) -> Result<Option<(String, Vec<PassageRecord>)>, IngestError> {
        let doc = &item.document;
        let spans: Vec<(usize, usize)> = chunk_text(&doc.text, &self.chunking)
            .into_iter()
            .map(|c| (c.start, c.end))
            .collect();
        if spans.is_empty() {
            self.store
                .fail_item(job_id, item.seq, "empty_text", "the document has no text")
                .await?;
            return Ok(None);
        }
        let hash = content_hash(doc);
        let result: Result<_, StoreError> = async {
            let mut tx = self.store.begin().await?;
            let outcome = Store::insert_document(&mut tx, doc, &hash, &spans).await?;
            let (status, doc_id) = match &outcome {
                InsertOutcome::Inserted { document_id, .. } => (ItemStatus::Done, document_id),
                InsertOutcome::Duplicate { document_id } => (ItemStatus::Duplicate, document_id),
            };
            Store::finish_item(&mut tx, job_id, item.seq, status, Some(doc_id), None).await?;
            tx.commit().await?;
            Ok(outcome)
        }
        .await;
        match result {
            Ok(InsertOutcome::Inserted {
                document_id,
                passage_ids,
            }) => {
                metrics::DOCUMENTS_INGESTED.inc();
                metrics::PASSAGES_INGESTED.inc_by(passage_ids.len() as u64);
                let passages = passage_ids
                    .iter()
                    .zip(&spans)
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
                Ok(Some((document_id, passages)))
            }
            Ok(InsertOutcome::Duplicate { .. }) => {
                metrics::DOCUMENTS_DUPLICATE.inc();
                Ok(None)
            }
            Err(e) => {
                tracing::warn!(job = %job_id, seq = item.seq, error = %e, "item failed");
                self.store
                    .fail_item(job_id, item.seq, "storage_error", &e.to_string())
                    .await?;
                Ok(None)
            }
        }
    }

    /// Adds passages to the BM25 index, commits, and marks their documents indexed.
    async fn index_passages(
        &self,
        passages: Vec<PassageRecord>,
        document_ids: &[String],
    ) -> Result<(), IngestError> {
        if document_ids.is_empty() {
            return Ok(());
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
                passages.extend(self.store.passages_of(id).await?);
            }
            self.index_passages(passages, batch).await?;
        }
        if !ids.is_empty() {
            tracing::info!(
                documents = ids.len(),
                "indexed documents left from an earlier run"
            );
        }
        Ok(ids.len())
    }

    /// Rebuilds the BM25 index from the store; returns the number of passages indexed.
    pub async fn reindex_all(&self) -> Result<u64, IngestError> {
        self.index.clear()?;
        let mut after = 0i64;
        let mut total = 0u64;
        loop {
            let page = self.store.passages_after(after, 2048).await?;
            let Some(last) = page.last() else { break };
            after = last.id;
            total += page.len() as u64;
            self.index.add_passages(&page)?;
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
}
