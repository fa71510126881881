//! Ingestion jobs and their items, persisted so that a job resumes after a crash or restart.

use super::{now_ms, opt_text, Store, StoreError};
use crate::store::NewDocument;
use serde::Serialize;
use sqlx::{Any, Row, Transaction};

/// Where a job stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    /// Accepted, not yet started.
    Queued,
    /// Being processed (or interrupted, to be resumed at start-up).
    Running,
    /// Every item was processed (some may have failed: see the counts).
    Completed,
    /// The job stopped on an error that was not any one item's fault.
    Failed,
}

impl JobStatus {
    fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Completed => "completed",
            JobStatus::Failed => "failed",
        }
    }

    fn parse(s: &str) -> Self {
        match s {
            "queued" => JobStatus::Queued,
            "running" => JobStatus::Running,
            "completed" => JobStatus::Completed,
            _ => JobStatus::Failed,
        }
    }
}

/// Where one item (one document) of a job stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ItemStatus {
    /// Not processed yet.
    Pending,
    /// Stored as a new document.
    Done,
    /// Identical to a stored document; nothing changed.
    Duplicate,
    /// Could not be processed; see its error.
    Failed,
}

impl ItemStatus {
    fn as_str(self) -> &'static str {
        match self {
            ItemStatus::Pending => "pending",
            ItemStatus::Done => "done",
            ItemStatus::Duplicate => "duplicate",
            ItemStatus::Failed => "failed",
        }
    }
}

/// Progress counts of a job.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct JobCounts {
    /// Items in the job.
    pub total: i64,
    /// Items not processed yet.
    pub pending: i64,
    /// Items stored as new documents.
    pub done: i64,
    /// Items that matched an existing document.
    pub duplicate: i64,
    /// Items that failed.
    pub failed: i64,
}

/// A failed item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ItemError {
    /// Position of the item in the job, from 0.
    pub index: i64,
    /// The item's title.
    pub title: String,
    /// The item's source file, if any.
    pub source: Option<String>,
    /// Stable error code.
    pub code: String,
    /// What went wrong.
    pub message: String,
}

/// A job as reported by `GET /v1/jobs/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct JobRecord {
    /// Job id.
    pub id: String,
    /// Status.
    pub status: JobStatus,
    /// Progress counts.
    pub counts: JobCounts,
    /// Per-item errors.
    pub errors: Vec<ItemError>,
    /// Ids of the documents the job stored or matched, in item order.
    pub document_ids: Vec<String>,
    /// Job-level error, when `status` is `failed`.
    pub error: Option<String>,
    /// Which extractor builds the knowledge graph from the job's passages (`fallback` when no generation model
    /// extracts them, `llm-v1:MODEL` when the model does); unset before the job's first passages are indexed
    /// or when the graph is off.
    pub extractor: Option<String>,
    /// Passages of the job's (new, still stored) documents extracted so far, cached extractions included: counted
    /// from the extractions, so exact after a crash too.
    pub passages_extracted: i64,
    /// Creation time, ms since the Unix epoch.
    pub created_at: i64,
    /// Last change, ms since the Unix epoch.
    pub updated_at: i64,
}

/// A pending item, as handed to the pipeline.
#[derive(Debug, Clone, PartialEq)]
pub struct JobItem {
    /// Position in the job.
    pub seq: i64,
    /// The document to ingest.
    pub document: NewDocument,
}

impl Store {
    /// Creates a queued job holding `documents` as its items, in one transaction.
    pub async fn create_job(&self, documents: &[NewDocument]) -> Result<String, StoreError> {
        let id = uuid::Uuid::now_v7().to_string();
        let now = now_ms();
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO jobs (id, status, error, created_at, updated_at) VALUES ($1, $2, NULL, $3, $3)",
        )
        .bind(&id)
        .bind(JobStatus::Queued.as_str())
        .bind(now)
        .execute(&mut *tx)
        .await?;
        for (seq, doc) in documents.iter().enumerate() {
            sqlx::query(
                "INSERT INTO job_items (job_id, seq, title, source, media_type, text, metadata, status) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, 'pending')",
            )
            .bind(&id)
            .bind(seq as i64)
            .bind(&doc.title)
            .bind(doc.source.clone())
            .bind(&doc.media_type)
            .bind(&doc.text)
            .bind(doc.metadata.to_string())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(id)
    }

    /// A job with its counts and errors, or `None` for an unknown id.
    pub async fn get_job(&self, id: &str) -> Result<Option<JobRecord>, StoreError> {
        let Some(row) = sqlx::query(
            "SELECT id, status, error, extractor, created_at, updated_at FROM jobs WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        else {
            return Ok(None);
        };
        let mut counts = JobCounts::default();
        let grouped = sqlx::query(
            "SELECT status, COUNT(*) AS n FROM job_items WHERE job_id = $1 GROUP BY status",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        for g in grouped {
            let status: String = g.try_get("status")?;
            let n: i64 = g.try_get("n")?;
            counts.total += n;
            match status.as_str() {
                "pending" => counts.pending = n,
                "done" => counts.done = n,
                "duplicate" => counts.duplicate = n,
                _ => counts.failed += n,
            }
        }
        let errors = sqlx::query(
            "SELECT seq, title, source, error_code, error_message FROM job_items \
             WHERE job_id = $1 AND status = 'failed' ORDER BY seq LIMIT 1000",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| {
            Ok(ItemError {
                index: r.try_get("seq")?,
                title: r.try_get("title")?,
                source: opt_text(r, "source")?,
                code: opt_text(r, "error_code")?.unwrap_or_default(),
                message: opt_text(r, "error_message")?.unwrap_or_default(),
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
        let document_ids = sqlx::query_scalar(
            "SELECT document_id FROM job_items WHERE job_id = $1 AND document_id IS NOT NULL ORDER BY seq",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        // Counted from the extractions themselves rather than kept as a counter, so that it stays exact when
        // passages stored before a crash are extracted at the next start (outside the job).
        let passages_extracted: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM extractions e JOIN passages p ON p.id = e.passage_id \
             JOIN job_items i ON i.document_id = p.document_id \
             WHERE i.job_id = $1 AND i.status = 'done'",
        )
        .bind(id)
        .fetch_one(&self.pool)
        .await?;
        let status: String = row.try_get("status")?;
        Ok(Some(JobRecord {
            id: row.try_get("id")?,
            status: JobStatus::parse(&status),
            counts,
            errors,
            document_ids,
            error: opt_text(&row, "error")?,
            extractor: opt_text(&row, "extractor")?,
            passages_extracted,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
        }))
    }

    /// Records that `extractor` extracted `passages` more of the job's passages.
    pub async fn add_job_extracted(
        &self,
        job_id: &str,
        extractor: &str,
        passages: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE jobs SET extractor = $1, passages_extracted = passages_extracted + $2, updated_at = $3 \
             WHERE id = $4",
        )
        .bind(extractor.to_string())
        .bind(passages)
        .bind(now_ms())
        .bind(job_id.to_string())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Ids of jobs that are queued or were interrupted while running, oldest first.
    pub async fn unfinished_jobs(&self) -> Result<Vec<String>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT id FROM jobs WHERE status IN ('queued', 'running') ORDER BY created_at, id",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// Up to `limit` pending items of a job, in order.
    pub async fn pending_items(
        &self,
        job_id: &str,
        limit: i64,
    ) -> Result<Vec<JobItem>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, title, source, media_type, text, metadata FROM job_items \
             WHERE job_id = $1 AND status = 'pending' ORDER BY seq LIMIT $2",
        )
        .bind(job_id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let metadata: String = r.try_get("metadata")?;
                Ok(JobItem {
                    seq: r.try_get("seq")?,
                    document: NewDocument {
                        title: r.try_get("title")?,
                        text: r.try_get("text")?,
                        metadata: serde_json::from_str(&metadata).map_err(|source| {
                            StoreError::CorruptJson {
                                column: "job_items.metadata",
                                source,
                            }
                        })?,
                        source: opt_text(r, "source")?,
                        media_type: r.try_get("media_type")?,
                    },
                })
            })
            .collect()
    }

    /// Records an item's outcome inside the transaction that stored (or skipped) its document.
    pub async fn finish_item(
        tx: &mut Transaction<'static, Any>,
        job_id: &str,
        seq: i64,
        status: ItemStatus,
        document_id: Option<&str>,
        error: Option<(&str, &str)>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE job_items SET status = $1, document_id = $2, error_code = $3, error_message = $4 \
             WHERE job_id = $5 AND seq = $6",
        )
        .bind(status.as_str())
        .bind(document_id.map(str::to_string))
        .bind(error.map(|e| e.0.to_string()))
        .bind(error.map(|e| e.1.to_string()))
        .bind(job_id)
        .bind(seq)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// Records a failed item on its own (when its transaction had to be rolled back).
    pub async fn fail_item(
        &self,
        job_id: &str,
        seq: i64,
        code: &str,
        message: &str,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        Self::finish_item(
            &mut tx,
            job_id,
            seq,
            ItemStatus::Failed,
            None,
            Some((code, message)),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Marks every item of a job still pending as failed with `code` and `message` (when the job itself failed).
    pub async fn fail_pending_items(
        &self,
        job_id: &str,
        code: &str,
        message: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE job_items SET status = 'failed', error_code = $1, error_message = $2 \
             WHERE job_id = $3 AND status = 'pending'",
        )
        .bind(code.to_string())
        .bind(message.to_string())
        .bind(job_id.to_string())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Sets a job's status (and job-level error).
    pub async fn set_job_status(
        &self,
        id: &str,
        status: JobStatus,
        error: Option<&str>,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE jobs SET status = $1, error = $2, updated_at = $3 WHERE id = $4")
            .bind(status.as_str())
            .bind(error.map(str::to_string))
            .bind(now_ms())
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Starts a write transaction (for the pipeline, which stores a document and its item outcome together):
    /// [`Store::begin_write`].
    pub async fn begin(&self) -> Result<Transaction<'static, Any>, StoreError> {
        self.begin_write().await
    }
}
