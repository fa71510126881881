//! The BM25 passage index, on disk in `DATA_DIR/tantivy`.

use crate::store::PassageRecord;
use std::path::Path;
use std::sync::Mutex;
use tantivy::collector::TopDocs;
use tantivy::directory::MmapDirectory;
use tantivy::query::{BooleanQuery, Occur, Query, TermQuery};
use tantivy::schema::{
    Field, IndexRecordOption, Schema, Value, FAST, INDEXED, STORED, STRING, TEXT,
};
use tantivy::{doc, Index, IndexReader, IndexWriter, ReloadPolicy, TantivyDocument, Term};

/// Errors of the text index.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// Another process (usually a running `engram serve`) holds the index writer.
    #[error("the BM25 index in {dir} is locked by another engram process: stop the server, or ingest through the HTTP API")]
    Locked {
        /// The index directory.
        dir: String,
    },
    /// The index directory could not be created or opened.
    #[error("cannot open the BM25 index in {dir}: {reason}")]
    Open {
        /// The index directory.
        dir: String,
        /// Why.
        reason: String,
    },
    /// Tantivy failed.
    #[error("BM25 index error: {0}")]
    Tantivy(#[from] tantivy::TantivyError),
}

/// Heap given to the tantivy writer.
const WRITER_HEAP_BYTES: usize = 64 * 1024 * 1024;

struct Fields {
    passage_id: Field,
    document_id: Field,
    body: Field,
}

/// The tantivy index of passages: title and text in one BM25 field, keyed by passage id and document id.
pub struct TextIndex {
    index: Index,
    reader: IndexReader,
    writer: Mutex<IndexWriter>,
    fields: Fields,
}

impl std::fmt::Debug for TextIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextIndex").finish_non_exhaustive()
    }
}

fn schema() -> (Schema, Fields) {
    let mut b = Schema::builder();
    let passage_id = b.add_i64_field("passage_id", INDEXED | FAST | STORED);
    let document_id = b.add_text_field("document_id", STRING | STORED);
    let body = b.add_text_field("body", TEXT);
    (
        b.build(),
        Fields {
            passage_id,
            document_id,
            body,
        },
    )
}

impl TextIndex {
    /// Opens the index in `dir`, creating the directory and an empty index if needed.
    pub fn open(dir: &Path) -> Result<Self, IndexError> {
        let shown = dir.display().to_string();
        std::fs::create_dir_all(dir).map_err(|e| IndexError::Open {
            dir: shown.clone(),
            reason: e.to_string(),
        })?;
        let mmap = MmapDirectory::open(dir).map_err(|e| IndexError::Open {
            dir: shown.clone(),
            reason: e.to_string(),
        })?;
        let (schema, fields) = schema();
        let index = Index::open_or_create(mmap, schema)?;
        let writer = index.writer(WRITER_HEAP_BYTES).map_err(|e| match e {
            tantivy::TantivyError::LockFailure(..) => IndexError::Locked { dir: shown.clone() },
            other => IndexError::Tantivy(other),
        })?;
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()?;
        Ok(Self {
            index,
            reader,
            writer: Mutex::new(writer),
            fields,
        })
    }

    fn writer(&self) -> std::sync::MutexGuard<'_, IndexWriter> {
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stages passages for indexing (call [`TextIndex::commit`] to make them durable and searchable).
    pub fn add_passages(&self, passages: &[PassageRecord]) -> Result<(), IndexError> {
        let writer = self.writer();
        for p in passages {
            writer.add_document(doc!(
                self.fields.passage_id => p.id,
                self.fields.document_id => p.document_id.as_str(),
                self.fields.body => format!("{} {}", p.title, p.text),
            ))?;
        }
        Ok(())
    }

    /// Stages the removal of every passage of a document.
    pub fn delete_document(&self, document_id: &str) {
        let term = Term::from_field_text(self.fields.document_id, document_id);
        self.writer().delete_term(term);
    }

    /// Stages the removal of everything (for a rebuild).
    pub fn clear(&self) -> Result<(), IndexError> {
        self.writer().delete_all_documents()?;
        Ok(())
    }

    /// Commits staged changes to disk and makes them visible to searches.
    pub fn commit(&self) -> Result<(), IndexError> {
        self.writer().commit()?;
        self.reader.reload()?;
        Ok(())
    }

    /// Number of passages visible to searches.
    pub fn num_passages(&self) -> u64 {
        self.reader.searcher().num_docs()
    }

    /// The `top_k` passages by BM25 score for `query`, as `(passage_id, score)`, best first. Every query token is
    /// an optional clause, so no query syntax is interpreted: any user text is a valid query.
    pub fn search(&self, query: &str, top_k: usize) -> Result<Vec<(i64, f32)>, IndexError> {
        let mut analyzer = self.index.tokenizer_for_field(self.fields.body)?;
        let mut stream = analyzer.token_stream(query);
        let mut clauses: Vec<(Occur, Box<dyn Query>)> = Vec::new();
        while let Some(token) = stream.next() {
            let term = Term::from_field_text(self.fields.body, &token.text);
            clauses.push((
                Occur::Should,
                Box::new(TermQuery::new(term, IndexRecordOption::WithFreqs)),
            ));
        }
        if clauses.is_empty() || top_k == 0 {
            return Ok(Vec::new());
        }
        let searcher = self.reader.searcher();
        let hits = searcher.search(&BooleanQuery::new(clauses), &TopDocs::with_limit(top_k))?;
        let mut out = Vec::with_capacity(hits.len());
        for (score, addr) in hits {
            let stored: TantivyDocument = searcher.doc(addr)?;
            if let Some(id) = stored
                .get_first(self.fields.passage_id)
                .and_then(|v| v.as_i64())
            {
                out.push((id, score));
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn passage(id: i64, doc: &str, title: &str, text: &str) -> PassageRecord {
        PassageRecord {
            id,
            document_id: doc.into(),
            ordinal: 0,
            title: title.into(),
            text: text.into(),
            start_byte: 0,
            end_byte: text.len() as i64,
        }
    }

    #[test]
    fn search_ranks_matching_passages_and_deletes_by_document() {
        let dir = tempfile::tempdir().unwrap();
        let index = TextIndex::open(dir.path()).unwrap();
        index
            .add_passages(&[
                passage(1, "a", "Otters", "Sea otters hold hands while they sleep."),
                passage(2, "b", "Granite", "Granite is an igneous rock."),
                passage(
                    3,
                    "b",
                    "Basalt",
                    "Basalt is a volcanic rock, unlike otters.",
                ),
            ])
            .unwrap();
        index.commit().unwrap();
        assert_eq!(index.num_passages(), 3);
        let hits = index.search("Which rock is igneous?", 10).unwrap();
        assert_eq!(hits[0].0, 2);
        assert!(hits.iter().all(|h| h.1 > 0.0));
        // Query syntax characters are plain text, not errors.
        assert!(index.search("otters: (\"sleep\" AND", 5).unwrap()[0].0 == 1);
        assert!(index.search("  ?! ", 5).unwrap().is_empty());

        index.delete_document("b");
        index.commit().unwrap();
        assert_eq!(index.num_passages(), 1);
        let ids: Vec<i64> = index
            .search("rock otters", 10)
            .unwrap()
            .iter()
            .map(|h| h.0)
            .collect();
        assert_eq!(ids, vec![1]);
    }

    #[test]
    fn index_persists_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let index = TextIndex::open(dir.path()).unwrap();
            index
                .add_passages(&[passage(7, "d", "Kelp", "Kelp forests grow fast.")])
                .unwrap();
            index.commit().unwrap();
        }
        let index = TextIndex::open(dir.path()).unwrap();
        assert_eq!(index.search("kelp", 1).unwrap()[0].0, 7);
    }

    #[test]
    fn second_writer_is_reported_as_locked() {
        let dir = tempfile::tempdir().unwrap();
        let _first = TextIndex::open(dir.path()).unwrap();
        let err = TextIndex::open(dir.path()).unwrap_err();
        assert!(matches!(err, IndexError::Locked { .. }), "{err}");
    }
}
