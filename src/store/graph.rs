//! The knowledge graph's tables: extractions per passage, phrase nodes, triples and synonym edges.
//!
//! The in-memory graph (`crate::graph`) is rebuilt from these rows at start; they are the source of truth.

use super::{placeholders, value_rows, Store, StoreError};
use crate::openie::{normalize_phrase, Extraction};
use sqlx::{Any, Row, Transaction};
use std::collections::HashMap;

/// Rows per multi-row `INSERT` (kept well under both engines' bind-parameter limits).
const ROWS_PER_INSERT: usize = 100;

/// A stored triple: phrase ids of its subject and object, and the relation text.
#[derive(Debug, Clone, PartialEq)]
pub struct TripleRow {
    /// Triple id (the point id of its fact vector).
    pub id: i64,
    /// The passage it was extracted from.
    pub passage_id: i64,
    /// The document of that passage.
    pub document_id: String,
    /// Phrase id of the subject.
    pub subject_id: i64,
    /// The relation, as extracted.
    pub relation: String,
    /// Phrase id of the object.
    pub object_id: i64,
}

/// Everything the in-memory graph is built from.
#[derive(Debug, Clone, Default)]
pub struct GraphRows {
    /// Every phrase: id and normalised text.
    pub phrases: Vec<(i64, String)>,
    /// Every triple.
    pub triples: Vec<TripleRow>,
    /// Every synonym edge: the two phrase ids (smaller first) and the cosine similarity.
    pub synonyms: Vec<(i64, i64, f64)>,
    /// Every extracted passage (with or without triples) and its document.
    pub extracted: Vec<(i64, String)>,
}

/// What [`Store::save_extractions`] stored.
#[derive(Debug, Clone, Default)]
pub struct SavedExtractions {
    /// The triples, in id order.
    pub triples: Vec<TripleRow>,
    /// Id and text of every phrase the triples use.
    pub phrases: Vec<(i64, String)>,
}

const TRIPLE_SELECT: &str =
    "SELECT t.id, t.passage_id, p.document_id, t.subject_id, t.relation, t.object_id \
     FROM triples t JOIN passages p ON p.id = t.passage_id";

fn triple_from_row(row: &sqlx::any::AnyRow) -> Result<TripleRow, StoreError> {
    Ok(TripleRow {
        id: row.try_get("id")?,
        passage_id: row.try_get("passage_id")?,
        document_id: row.try_get("document_id")?,
        subject_id: row.try_get("subject_id")?,
        relation: row.try_get("relation")?,
        object_id: row.try_get("object_id")?,
    })
}

impl Store {
    /// Stores the extractions of passages in one transaction, replacing any earlier extraction of the same passages
    /// (so that re-running is safe). Subjects and objects become phrase rows (normalised; a triple whose subject or
    /// object normalises to nothing is dropped). Returns the stored triples and their phrases.
    pub async fn save_extractions(
        &self,
        extractor: &str,
        items: &[(i64, Extraction)],
    ) -> Result<SavedExtractions, StoreError> {
        let mut tx = self.begin_write().await?;
        let ids: Vec<i64> = items.iter().map(|i| i.0).collect();
        delete_extractions(&mut tx, &ids).await?;
        let mut texts: Vec<String> = items
            .iter()
            .flat_map(|(_, e)| e.triples.iter())
            .flat_map(|t| [normalize_phrase(&t.subject), normalize_phrase(&t.object)])
            .filter(|p| !p.is_empty())
            .collect();
        texts.sort();
        texts.dedup();
        let phrase_ids = upsert_phrases(&mut tx, &texts).await?;
        let mut rows: Vec<(i64, i64, &str, i64)> = Vec::new();
        for (passage_id, e) in items {
            for t in &e.triples {
                let s = phrase_ids.get(&normalize_phrase(&t.subject));
                let o = phrase_ids.get(&normalize_phrase(&t.object));
                if let (Some(&s), Some(&o)) = (s, o) {
                    rows.push((*passage_id, s, t.relation.trim(), o));
                }
            }
        }
        for chunk in rows.chunks(ROWS_PER_INSERT) {
            let sql = format!(
                "INSERT INTO triples (passage_id, subject_id, relation, object_id) VALUES {}",
                value_rows(chunk.len(), 4)
            );
            let mut q = sqlx::query(&sql);
            for (p, s, r, o) in chunk {
                q = q.bind(*p).bind(*s).bind(r.to_string()).bind(*o);
            }
            q.execute(&mut *tx).await?;
        }
        for chunk in items.chunks(ROWS_PER_INSERT) {
            let sql = format!(
                "INSERT INTO extractions (passage_id, extractor, entities) VALUES {}",
                value_rows(chunk.len(), 3)
            );
            let mut q = sqlx::query(&sql);
            for (p, e) in chunk {
                let entities = serde_json::to_string(&e.entities).map_err(|source| {
                    StoreError::CorruptJson {
                        column: "extractions.entities",
                        source,
                    }
                })?;
                q = q.bind(*p).bind(extractor.to_string()).bind(entities);
            }
            q.execute(&mut *tx).await?;
        }
        let triples = if ids.is_empty() {
            Vec::new()
        } else {
            triples_of(&mut tx, &ids).await?
        };
        tx.commit().await?;
        Ok(SavedExtractions {
            triples,
            phrases: phrase_ids.into_iter().map(|(t, id)| (id, t)).collect(),
        })
    }

    /// Cached extractions of `extractor` for the given content hashes (those it has).
    pub async fn cached_extractions(
        &self,
        extractor: &str,
        hashes: &[String],
    ) -> Result<HashMap<String, Extraction>, StoreError> {
        let mut out = HashMap::new();
        for chunk in hashes.chunks(ROWS_PER_INSERT) {
            let sql = format!(
                "SELECT content_hash, extraction FROM extraction_cache WHERE extractor = $1 \
                 AND content_hash IN ({})",
                placeholders(2, chunk.len())
            );
            let mut q = sqlx::query(&sql).bind(extractor.to_string());
            for h in chunk {
                q = q.bind(h.clone());
            }
            for row in q.fetch_all(&self.pool).await? {
                let json: String = row.try_get("extraction")?;
                let e = serde_json::from_str(&json).map_err(|source| StoreError::CorruptJson {
                    column: "extraction_cache.extraction",
                    source,
                })?;
                out.insert(row.try_get("content_hash")?, e);
            }
        }
        Ok(out)
    }

    /// Caches extractions of `extractor` by content hash (an existing entry is kept: same content, same
    /// extractor, same answer).
    pub async fn cache_extractions(
        &self,
        extractor: &str,
        items: &[(String, Extraction)],
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        for chunk in items.chunks(ROWS_PER_INSERT) {
            let sql = format!(
                "INSERT INTO extraction_cache (content_hash, extractor, extraction) VALUES {} \
                 ON CONFLICT (content_hash, extractor) DO NOTHING",
                value_rows(chunk.len(), 3)
            );
            let mut q = sqlx::query(&sql);
            for (hash, e) in chunk {
                let json = serde_json::to_string(e).map_err(|source| StoreError::CorruptJson {
                    column: "extraction_cache.extraction",
                    source,
                })?;
                q = q.bind(hash.clone()).bind(extractor.to_string()).bind(json);
            }
            q.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Everything the in-memory graph is built from, read in one snapshot.
    pub async fn graph_rows(&self) -> Result<GraphRows, StoreError> {
        let mut tx = self.begin_write().await?;
        let phrases = sqlx::query("SELECT id, text FROM phrases")
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|r| Ok((r.try_get("id")?, r.try_get("text")?)))
            .collect::<Result<Vec<_>, StoreError>>()?;
        let triples = sqlx::query(&format!("{TRIPLE_SELECT} ORDER BY t.id"))
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(triple_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        let synonyms = sqlx::query("SELECT phrase_a, phrase_b, weight FROM synonyms")
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|r| {
                Ok((
                    r.try_get("phrase_a")?,
                    r.try_get("phrase_b")?,
                    r.try_get("weight")?,
                ))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        let extracted = sqlx::query(
            "SELECT e.passage_id, p.document_id FROM extractions e \
             JOIN passages p ON p.id = e.passage_id ORDER BY e.passage_id",
        )
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|r| Ok((r.try_get("passage_id")?, r.try_get("document_id")?)))
        .collect::<Result<Vec<_>, StoreError>>()?;
        tx.commit().await?;
        Ok(GraphRows {
            phrases,
            triples,
            synonyms,
            extracted,
        })
    }

    /// Phrases whose vectors and synonym edges are not yet computed, oldest first, at most `limit`.
    pub async fn unlinked_phrases(&self, limit: i64) -> Result<Vec<(i64, String)>, StoreError> {
        sqlx::query("SELECT id, text FROM phrases WHERE linked = 0 ORDER BY id LIMIT $1")
            .bind(limit)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| Ok((r.try_get("id")?, r.try_get("text")?)))
            .collect()
    }

    /// Stores synonym edges (pairs in either order; an existing edge is kept) and marks `phrase_ids` linked, in
    /// one transaction.
    pub async fn link_phrases(
        &self,
        phrase_ids: &[i64],
        synonyms: &[(i64, i64, f64)],
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        for chunk in synonyms.chunks(ROWS_PER_INSERT) {
            let sql = format!(
                "INSERT INTO synonyms (phrase_a, phrase_b, weight) VALUES {} \
                 ON CONFLICT (phrase_a, phrase_b) DO NOTHING",
                value_rows(chunk.len(), 3)
            );
            let mut q = sqlx::query(&sql);
            for &(a, b, w) in chunk {
                q = q.bind(a.min(b)).bind(a.max(b)).bind(w);
            }
            q.execute(&mut *tx).await?;
        }
        for chunk in phrase_ids.chunks(500) {
            let sql = format!(
                "UPDATE phrases SET linked = 1 WHERE id IN ({})",
                placeholders(1, chunk.len())
            );
            let mut q = sqlx::query(&sql);
            for id in chunk {
                q = q.bind(*id);
            }
            q.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Marks every phrase unlinked and drops the synonym edges (their vectors are to be recomputed).
    pub async fn unlink_all_phrases(&self) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        sqlx::query("DELETE FROM synonyms")
            .execute(&mut *tx)
            .await?;
        sqlx::query("UPDATE phrases SET linked = 0")
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Passages that have no stored extraction, in id order, after `after`, at most `limit`.
    pub async fn passages_without_extraction(
        &self,
        after: i64,
        limit: i64,
    ) -> Result<Vec<super::PassageRecord>, StoreError> {
        let ids: Vec<i64> = sqlx::query_scalar(
            "SELECT p.id FROM passages p LEFT JOIN extractions e ON e.passage_id = p.id \
             WHERE e.passage_id IS NULL AND p.id > $1 ORDER BY p.id LIMIT $2",
        )
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        let mut passages = self.passages_by_ids(&ids).await?;
        passages.sort_by_key(|p| p.id);
        Ok(passages)
    }

    /// Deletes every extraction and triple (phrases and synonym edges are kept: they are keyed by text).
    pub async fn clear_extractions(&self) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        sqlx::query("DELETE FROM triples").execute(&mut *tx).await?;
        sqlx::query("DELETE FROM extractions")
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Number of extracted passages, triples and phrases.
    pub async fn graph_counts(&self) -> Result<(i64, i64, i64), StoreError> {
        let count = |table: &'static str| async move {
            sqlx::query_scalar::<_, i64>(&format!("SELECT COUNT(*) FROM {table}"))
                .fetch_one(&self.pool)
                .await
        };
        Ok((
            count("extractions").await?,
            count("triples").await?,
            count("phrases").await?,
        ))
    }
}

/// Deletes the extractions and triples of `passage_ids` inside `tx`.
pub(super) async fn delete_extractions(
    tx: &mut Transaction<'static, Any>,
    passage_ids: &[i64],
) -> Result<(), StoreError> {
    for chunk in passage_ids.chunks(500) {
        for table in ["triples", "extractions"] {
            let sql = format!(
                "DELETE FROM {table} WHERE passage_id IN ({})",
                placeholders(1, chunk.len())
            );
            let mut q = sqlx::query(&sql);
            for id in chunk {
                q = q.bind(*id);
            }
            q.execute(&mut **tx).await?;
        }
    }
    Ok(())
}

/// Inserts phrases that do not exist yet and returns the ids of all of `texts`.
async fn upsert_phrases(
    tx: &mut Transaction<'static, Any>,
    texts: &[String],
) -> Result<HashMap<String, i64>, StoreError> {
    let mut ids = HashMap::with_capacity(texts.len());
    for chunk in texts.chunks(ROWS_PER_INSERT) {
        let sql = format!(
            "INSERT INTO phrases (text) VALUES {} ON CONFLICT (text) DO NOTHING",
            value_rows(chunk.len(), 1)
        );
        let mut q = sqlx::query(&sql);
        for t in chunk {
            q = q.bind(t.clone());
        }
        q.execute(&mut **tx).await?;
        let sql = format!(
            "SELECT id, text FROM phrases WHERE text IN ({})",
            placeholders(1, chunk.len())
        );
        let mut q = sqlx::query(&sql);
        for t in chunk {
            q = q.bind(t.clone());
        }
        for row in q.fetch_all(&mut **tx).await? {
            ids.insert(row.try_get("text")?, row.try_get("id")?);
        }
    }
    Ok(ids)
}

/// The triples of `passage_ids`, in id order.
async fn triples_of(
    tx: &mut Transaction<'static, Any>,
    passage_ids: &[i64],
) -> Result<Vec<TripleRow>, StoreError> {
    let mut out = Vec::new();
    for chunk in passage_ids.chunks(500) {
        let sql = format!(
            "{TRIPLE_SELECT} WHERE t.passage_id IN ({}) ORDER BY t.id",
            placeholders(1, chunk.len())
        );
        let mut q = sqlx::query(&sql);
        for id in chunk {
            q = q.bind(*id);
        }
        for row in q.fetch_all(&mut **tx).await? {
            out.push(triple_from_row(&row)?);
        }
    }
    Ok(out)
}
