//! Documents and their passages.

use super::{now_ms, opt_text, placeholders, Store, StoreError};
use crate::store::NewDocument;
use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};

/// A stored passage: a span of its document's text.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct PassageRecord {
    /// Passage id (stable; the id every index refers to).
    pub id: i64,
    /// The document it belongs to.
    pub document_id: String,
    /// Position of the passage within its document, from 0.
    pub ordinal: i64,
    /// The document's title.
    pub title: String,
    /// The passage text (`document.text[start_byte..end_byte]`).
    pub text: String,
    /// Byte offset where the passage starts in the document text.
    pub start_byte: i64,
    /// Byte offset just past the passage's end in the document text.
    pub end_byte: i64,
}

/// A document without its text and passages, as listed.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct DocumentSummary {
    /// Document id.
    pub id: String,
    /// Title.
    pub title: String,
    /// Upload file name or CLI path, if any.
    pub source: Option<String>,
    /// Media type of the source.
    pub media_type: String,
    /// SHA-256 of title and text: the dedupe key.
    pub content_hash: String,
    /// Caller-supplied metadata.
    #[schema(value_type = Object, nullable)]
    pub metadata: serde_json::Value,
    /// Number of passages.
    pub passage_count: i64,
    /// Creation time, milliseconds since the Unix epoch.
    pub created_at: i64,
}

/// A whole document: summary, text and passages.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct DocumentRecord {
    /// The summary fields.
    #[serde(flatten)]
    pub summary: DocumentSummary,
    /// The full text that passage offsets point into.
    pub text: String,
    /// The passages, in order.
    pub passages: Vec<PassageRecord>,
}

/// One page of the document list.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct DocumentPage {
    /// The documents on this page, newest first.
    pub data: Vec<DocumentSummary>,
    /// How many documents match in all.
    pub total: i64,
    /// Page size asked for.
    pub limit: i64,
    /// Offset asked for.
    pub offset: i64,
}

/// What inserting a document did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InsertOutcome {
    /// A new document was stored with these passage ids.
    Inserted {
        /// The new document's id.
        document_id: String,
        /// Ids of its passages, in order.
        passage_ids: Vec<i64>,
    },
    /// A document with the same content hash already exists; nothing changed.
    Duplicate {
        /// The existing document's id.
        document_id: String,
    },
}

const SUMMARY_COLUMNS: &str =
    "d.id, d.title, d.source, d.media_type, d.content_hash, d.metadata, d.created_at, \
     (SELECT COUNT(*) FROM passages p WHERE p.document_id = d.id) AS passage_count";

fn summary_from_row(row: &AnyRow) -> Result<DocumentSummary, StoreError> {
    let metadata: String = row.try_get("metadata")?;
    Ok(DocumentSummary {
        id: row.try_get("id")?,
        title: row.try_get("title")?,
        source: opt_text(row, "source")?,
        media_type: row.try_get("media_type")?,
        content_hash: row.try_get("content_hash")?,
        metadata: serde_json::from_str(&metadata).map_err(|source| StoreError::CorruptJson {
            column: "documents.metadata",
            source,
        })?,
        passage_count: row.try_get("passage_count")?,
        created_at: row.try_get("created_at")?,
    })
}

fn passage_from_row(row: &AnyRow) -> Result<PassageRecord, StoreError> {
    Ok(PassageRecord {
        id: row.try_get("id")?,
        document_id: row.try_get("document_id")?,
        ordinal: row.try_get("ordinal")?,
        title: row.try_get("title")?,
        text: row.try_get("text")?,
        start_byte: row.try_get("start_byte")?,
        end_byte: row.try_get("end_byte")?,
    })
}

const PASSAGE_COLUMNS: &str = "id, document_id, ordinal, title, text, start_byte, end_byte";

impl Store {
    /// Inserts a document and its passage spans (byte ranges into `doc.text`) inside `tx`, unless a document with
    /// the same `content_hash` exists, in which case nothing is written.
    pub async fn insert_document(
        tx: &mut Transaction<'static, Any>,
        doc: &NewDocument,
        content_hash: &str,
        spans: &[(usize, usize)],
    ) -> Result<InsertOutcome, StoreError> {
        let id = uuid::Uuid::now_v7().to_string();
        let inserted = sqlx::query(
            "INSERT INTO documents (id, title, source, media_type, content_hash, text, metadata, indexed, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, 0, $8) ON CONFLICT (content_hash) DO NOTHING RETURNING id",
        )
        .bind(&id)
        .bind(&doc.title)
        .bind(doc.source.clone())
        .bind(&doc.media_type)
        .bind(content_hash)
        .bind(&doc.text)
        .bind(doc.metadata.to_string())
        .bind(now_ms())
        .fetch_optional(&mut **tx)
        .await?;
        if inserted.is_none() {
            let existing: String =
                sqlx::query_scalar("SELECT id FROM documents WHERE content_hash = $1")
                    .bind(content_hash)
                    .fetch_one(&mut **tx)
                    .await?;
            return Ok(InsertOutcome::Duplicate {
                document_id: existing,
            });
        }
        let mut passage_ids = Vec::with_capacity(spans.len());
        for (ordinal, &(start, end)) in spans.iter().enumerate() {
            let pid: i64 = sqlx::query_scalar(
                "INSERT INTO passages (document_id, ordinal, title, text, start_byte, end_byte) \
                 VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
            )
            .bind(&id)
            .bind(ordinal as i64)
            .bind(&doc.title)
            .bind(&doc.text[start..end])
            .bind(start as i64)
            .bind(end as i64)
            .fetch_one(&mut **tx)
            .await?;
            passage_ids.push(pid);
        }
        Ok(InsertOutcome::Inserted {
            document_id: id,
            passage_ids,
        })
    }

    /// One page of documents, newest first, optionally filtered by a case-insensitive title substring.
    pub async fn list_documents(
        &self,
        limit: i64,
        offset: i64,
        title_contains: Option<&str>,
    ) -> Result<DocumentPage, StoreError> {
        let pattern = title_contains.map(|q| format!("%{}%", q.to_lowercase()));
        let filter = if pattern.is_some() {
            "WHERE LOWER(d.title) LIKE $1"
        } else {
            ""
        };
        let total: i64 = {
            let sql = format!("SELECT COUNT(*) FROM documents d {filter}");
            let mut q = sqlx::query_scalar(&sql);
            if let Some(p) = &pattern {
                q = q.bind(p.clone());
            }
            q.fetch_one(&self.pool).await?
        };
        let (l, o) = if pattern.is_some() {
            ("$2", "$3")
        } else {
            ("$1", "$2")
        };
        let sql = format!(
            "SELECT {SUMMARY_COLUMNS} FROM documents d {filter} ORDER BY d.created_at DESC, d.id DESC LIMIT {l} OFFSET {o}"
        );
        let mut q = sqlx::query(&sql);
        if let Some(p) = &pattern {
            q = q.bind(p.clone());
        }
        let rows = q.bind(limit).bind(offset).fetch_all(&self.pool).await?;
        let data = rows
            .iter()
            .map(summary_from_row)
            .collect::<Result<_, _>>()?;
        Ok(DocumentPage {
            data,
            total,
            limit,
            offset,
        })
    }

    /// A whole document with its passages, or `None` if there is no such id.
    pub async fn get_document(&self, id: &str) -> Result<Option<DocumentRecord>, StoreError> {
        let sql = format!("SELECT {SUMMARY_COLUMNS}, d.text FROM documents d WHERE d.id = $1");
        let Some(row) = sqlx::query(&sql)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
        else {
            return Ok(None);
        };
        let summary = summary_from_row(&row)?;
        let text: String = row.try_get("text")?;
        let passages = self.passages_of(id).await?;
        Ok(Some(DocumentRecord {
            summary,
            text,
            passages,
        }))
    }

    /// The passages of one document, in order.
    pub async fn passages_of(&self, document_id: &str) -> Result<Vec<PassageRecord>, StoreError> {
        let sql = format!(
            "SELECT {PASSAGE_COLUMNS} FROM passages WHERE document_id = $1 ORDER BY ordinal"
        );
        let rows = sqlx::query(&sql)
            .bind(document_id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(passage_from_row).collect()
    }

    /// The passages with these ids (any order; missing ids are skipped).
    pub async fn passages_by_ids(&self, ids: &[i64]) -> Result<Vec<PassageRecord>, StoreError> {
        let mut out = Vec::with_capacity(ids.len());
        for batch in ids.chunks(500) {
            let sql = format!(
                "SELECT {PASSAGE_COLUMNS} FROM passages WHERE id IN ({})",
                placeholders(1, batch.len())
            );
            let mut q = sqlx::query(&sql);
            for id in batch {
                q = q.bind(*id);
            }
            for row in q.fetch_all(&self.pool).await? {
                out.push(passage_from_row(&row)?);
            }
        }
        Ok(out)
    }

    /// Passages with id greater than `after`, in id order, at most `limit`: pages for a full reindex.
    pub async fn passages_after(
        &self,
        after: i64,
        limit: i64,
    ) -> Result<Vec<PassageRecord>, StoreError> {
        let sql =
            format!("SELECT {PASSAGE_COLUMNS} FROM passages WHERE id > $1 ORDER BY id LIMIT $2");
        let rows = sqlx::query(&sql)
            .bind(after)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(passage_from_row).collect()
    }

    /// Ids of documents whose passages are not yet known to be in the text index.
    pub async fn unindexed_documents(&self) -> Result<Vec<String>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT id FROM documents WHERE indexed = 0 ORDER BY created_at")
                .fetch_all(&self.pool)
                .await?,
        )
    }

    /// Records that these documents' passages are committed to the text index.
    pub async fn mark_indexed(&self, document_ids: &[String]) -> Result<(), StoreError> {
        for batch in document_ids.chunks(500) {
            let sql = format!(
                "UPDATE documents SET indexed = 1 WHERE id IN ({})",
                placeholders(1, batch.len())
            );
            let mut q = sqlx::query(&sql);
            for id in batch {
                q = q.bind(id.clone());
            }
            q.execute(&self.pool).await?;
        }
        Ok(())
    }

    /// Deletes a document and its passages in one transaction; returns whether it existed.
    pub async fn delete_document(&self, id: &str) -> Result<bool, StoreError> {
        let mut tx = self.begin_write().await?;
        // Explicit child deletes keep this independent of per-connection foreign-key settings.
        let passage_ids: Vec<i64> =
            sqlx::query_scalar("SELECT id FROM passages WHERE document_id = $1")
                .bind(id)
                .fetch_all(&mut *tx)
                .await?;
        super::graph::delete_extractions(&mut tx, &passage_ids).await?;
        sqlx::query("DELETE FROM passages WHERE document_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let done = sqlx::query("DELETE FROM documents WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(done.rows_affected() > 0)
    }

    /// Number of documents and passages stored.
    pub async fn counts(&self) -> Result<(i64, i64), StoreError> {
        let docs: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM documents")
            .fetch_one(&self.pool)
            .await?;
        let passages: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM passages")
            .fetch_one(&self.pool)
            .await?;
        Ok((docs, passages))
    }

    /// Every document's id, title and full text: for evaluation, which maps passages back to corpus entries.
    pub async fn document_keys(&self) -> Result<Vec<(String, String, String)>, StoreError> {
        let rows = sqlx::query("SELECT id, title, text FROM documents")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("id")?, r.try_get("title")?, r.try_get("text")?)))
            .collect()
    }
}
