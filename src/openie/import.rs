//! Import of precomputed open-IE extractions in HippoRAG's JSON format, and an [`Extractor`] answering from them.
//!
//! The file is an object with a `docs` array; each row has `passage` (`title + "\n" + text`, the lookup key),
//! `extracted_entities` (strings) and `extracted_triples` (`[subject, relation, object]` lists). Other top-level
//! fields (HippoRAG writes cost figures there) are ignored. Bad rows and bad triples are counted and skipped, never
//! fatal: see [`OpenIeTable::parse`].

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use serde_json::Value;

use super::{normalize_phrase, Extraction, Extractor, OpenIeError, PassageInput, Triple};

/// Counts of an import.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ImportStats {
    /// Rows of the `docs` array.
    pub rows: usize,
    /// Rows imported.
    pub imported: usize,
    /// Rows skipped: not an object, no string `passage`, `extracted_entities` not a list, `extracted_triples`
    /// present but not a list, or a passage already seen (the first row of a passage wins).
    pub skipped_rows: usize,
    /// Triples dropped from imported rows: not a list of exactly three strings, or a subject or object that
    /// normalises (see [`normalize_phrase`]) to nothing.
    pub skipped_triples: usize,
}

/// Precomputed extractions keyed by passage (`title + "\n" + text`).
pub struct OpenIeTable {
    by_key: HashMap<String, Extraction>,
    /// What the import found.
    pub stats: ImportStats,
}

impl std::fmt::Debug for OpenIeTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenIeTable")
            .field("passages", &self.by_key.len())
            .field("stats", &self.stats)
            .finish()
    }
}

impl OpenIeTable {
    /// Reads and parses a HippoRAG open-IE file (see [`OpenIeTable::parse`]).
    pub fn load(path: &Path) -> Result<Self, OpenIeError> {
        let shown = path.display().to_string();
        let json = std::fs::read_to_string(path).map_err(|source| OpenIeError::Read {
            path: shown.clone(),
            source,
        })?;
        Self::parse(&json, &shown)
    }

    /// Parses the text of a HippoRAG open-IE file; `path_for_errors` names it in errors.
    ///
    /// Python's `NaN`, `Infinity` and `-Infinity` (HippoRAG writes them in its statistics fields) are read as
    /// `null`. Invalid JSON, or a top level that is not an object with a `docs` array, is an
    /// [`OpenIeError::Format`]; bad rows and triples are skipped and counted in [`OpenIeTable::stats`]. Entities
    /// that are not strings, or normalise to nothing, are dropped; the rest are trimmed and de-duplicated keeping
    /// the first occurrence. A missing or null `extracted_triples` means no triples.
    pub fn parse(json: &str, path_for_errors: &str) -> Result<Self, OpenIeError> {
        let format = |reason: String| OpenIeError::Format {
            path: path_for_errors.to_string(),
            reason,
        };
        let json = python_constants_to_null(json);
        let root: Value =
            serde_json::from_str(&json).map_err(|e| format(format!("invalid JSON: {e}")))?;
        let docs = match root.get("docs") {
            Some(Value::Array(docs)) if root.is_object() => docs,
            _ => {
                return Err(format(
                    "expected an object with a `docs` array at the top level".into(),
                ))
            }
        };
        let mut table = OpenIeTable {
            by_key: HashMap::with_capacity(docs.len()),
            stats: ImportStats {
                rows: docs.len(),
                ..ImportStats::default()
            },
        };
        for row in docs {
            match parse_row(row) {
                Some((key, extraction, bad_triples)) if !table.by_key.contains_key(key) => {
                    table.by_key.insert(key.to_string(), extraction);
                    table.stats.imported += 1;
                    table.stats.skipped_triples += bad_triples;
                }
                _ => table.stats.skipped_rows += 1,
            }
        }
        Ok(table)
    }

    /// The extraction of a passage, by its key (`title + "\n" + text`, see [`PassageInput::key`]).
    pub fn get(&self, key: &str) -> Option<&Extraction> {
        self.by_key.get(key)
    }

    /// Number of passages.
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    /// Whether the table holds no passage.
    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }
}

/// Replaces the bare `NaN`, `Infinity` and `-Infinity` of Python's `json` module (outside strings) by `null`,
/// copying the text only when there is one.
fn python_constants_to_null(json: &str) -> Cow<'_, str> {
    const CONSTANTS: [&str; 3] = ["NaN", "-Infinity", "Infinity"];
    let bytes = json.as_bytes();
    let (mut out, mut copied) = (String::new(), 0);
    let (mut in_string, mut escaped) = (false, false);
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if in_string {
            (in_string, escaped) = (escaped || b != b'"', !escaped && b == b'\\');
        } else if b == b'"' {
            in_string = true;
        } else if let Some(c) = CONSTANTS
            .iter()
            .find(|c| bytes[i..].starts_with(c.as_bytes()))
        {
            out.push_str(&json[copied..i]);
            out.push_str("null");
            i += c.len();
            copied = i;
            continue;
        }
        i += 1;
    }
    if copied == 0 {
        return Cow::Borrowed(json);
    }
    out.push_str(&json[copied..]);
    Cow::Owned(out)
}

/// One row: its key, its extraction and the number of bad triples dropped from it, or `None` when the row must
/// be skipped.
fn parse_row(row: &Value) -> Option<(&str, Extraction, usize)> {
    let key = row.as_object()?.get("passage")?.as_str()?;
    let raw_entities = row.get("extracted_entities")?.as_array()?;
    let raw_triples = match row.get("extracted_triples") {
        None | Some(Value::Null) => &[][..],
        Some(value) => value.as_array()?.as_slice(),
    };
    let mut seen = HashSet::new();
    let entities = raw_entities
        .iter()
        .filter_map(Value::as_str)
        .map(str::trim)
        .filter(|e| !normalize_phrase(e).is_empty() && seen.insert(*e))
        .map(str::to_string)
        .collect();
    let triples: Vec<Triple> = raw_triples.iter().filter_map(parse_triple).collect();
    let bad_triples = raw_triples.len() - triples.len();
    Some((key, Extraction { entities, triples }, bad_triples))
}

/// A list of exactly three strings whose subject and object are not empty once normalised.
fn parse_triple(raw: &Value) -> Option<Triple> {
    let [s, r, o] = raw.as_array()?.as_slice() else {
        return None;
    };
    let (subject, relation, object) = (s.as_str()?.trim(), r.as_str()?.trim(), o.as_str()?.trim());
    if normalize_phrase(subject).is_empty() || normalize_phrase(object).is_empty() {
        return None;
    }
    Some(Triple {
        subject: subject.to_string(),
        relation: relation.to_string(),
        object: object.to_string(),
    })
}

/// An [`Extractor`] that answers from an [`OpenIeTable`] and falls back to another extractor for the passages the
/// table lacks (one batched call per [`Extractor::extract`]).
#[derive(Debug)]
pub struct PrecomputedExtractor {
    table: Arc<OpenIeTable>,
    fallback: Arc<dyn Extractor>,
    hits: AtomicUsize,
    misses: AtomicUsize,
}

impl PrecomputedExtractor {
    /// Answers from `table`, and from `fallback` for passages not in it.
    pub fn new(table: Arc<OpenIeTable>, fallback: Arc<dyn Extractor>) -> Self {
        PrecomputedExtractor {
            table,
            fallback,
            hits: AtomicUsize::new(0),
            misses: AtomicUsize::new(0),
        }
    }

    /// Passages answered from the table so far.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::Relaxed)
    }

    /// Passages sent to the fallback extractor so far.
    pub fn misses(&self) -> usize {
        self.misses.load(Ordering::Relaxed)
    }
}

impl Extractor for PrecomputedExtractor {
    fn name(&self) -> &str {
        "precomputed"
    }

    fn question_entities(&self, question: &str) -> Result<Vec<String>, OpenIeError> {
        self.fallback.question_entities(question)
    }

    fn extract(&self, passages: &[PassageInput<'_>]) -> Result<Vec<Extraction>, OpenIeError> {
        let found: Vec<Option<&Extraction>> =
            passages.iter().map(|p| self.table.get(&p.key())).collect();
        let missing: Vec<PassageInput<'_>> = passages
            .iter()
            .zip(&found)
            .filter(|(_, f)| f.is_none())
            .map(|(p, _)| *p)
            .collect();
        let from_fallback = if missing.is_empty() {
            Vec::new()
        } else {
            self.fallback.extract(&missing)?
        };
        if from_fallback.len() != missing.len() {
            return Err(OpenIeError::Extract(format!(
                "fallback extractor {} returned {} extractions for {} passages",
                self.fallback.name(),
                from_fallback.len(),
                missing.len()
            )));
        }
        self.hits
            .fetch_add(passages.len() - missing.len(), Ordering::Relaxed);
        self.misses.fetch_add(missing.len(), Ordering::Relaxed);
        let mut from_fallback = from_fallback.into_iter();
        Ok(found
            .into_iter()
            .map(|f| match f {
                Some(e) => e.clone(),
                None => from_fallback.next().unwrap_or_default(),
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> OpenIeTable {
        OpenIeTable::parse(json, "inline.json").expect("parses")
    }

    #[test]
    fn imports_good_rows() {
        let table = parse(
            r#"{"docs": [{"passage": "T\nThe text.", "extracted_entities": ["T", "Paris", "T", " Paris "],
                "extracted_triples": [["T", "is in", "Paris"]]}], "current_cost": 0.1}"#,
        );
        let e = table.get("T\nThe text.").expect("row imported");
        assert_eq!(e.entities, vec!["T", "Paris"]);
        assert_eq!(e.triples.len(), 1);
        assert_eq!(e.triples[0].relation, "is in");
        assert_eq!((table.len(), table.is_empty()), (1, false));
        assert_eq!(
            table.stats,
            ImportStats {
                rows: 1,
                imported: 1,
                skipped_rows: 0,
                skipped_triples: 0
            }
        );
        assert!(table.get("T\nother").is_none());
    }

    #[test]
    fn skips_malformed_rows_of_each_kind() {
        let table = parse(
            r#"{"docs": [
                "a string",
                {"extracted_entities": [], "extracted_triples": []},
                {"passage": 7, "extracted_entities": []},
                {"passage": "no entities", "extracted_triples": []},
                {"passage": "entities not a list", "extracted_entities": "Paris"},
                {"passage": "triples not a list", "extracted_entities": [], "extracted_triples": {}},
                {"passage": "ok", "extracted_entities": ["A", 3, null, "", "--", "B"]},
                {"passage": "ok", "extracted_entities": ["C"], "extracted_triples": [["x"]]}
            ]}"#,
        );
        assert_eq!(table.stats.rows, 8);
        assert_eq!(table.stats.imported, 1);
        assert_eq!(table.stats.skipped_rows, 7);
        assert_eq!(
            table.stats.skipped_triples, 0,
            "triples of skipped rows are not counted"
        );
        assert_eq!(
            table.get("ok").expect("first row of a key wins").entities,
            vec!["A", "B"]
        );
    }

    #[test]
    fn skips_malformed_triples() {
        let table = parse(
            r#"{"docs": [{"passage": "p", "extracted_entities": [], "extracted_triples": [
                ["A", "r", "B"], ["A", "B"], ["A", "r", "B", "x", "C"], ["A", 1, "B"], "A r B",
                ["", "r", "B"], ["A", "r", " -- "], ["A", "", "B"]]}]}"#,
        );
        let e = table.get("p").expect("row imported");
        assert_eq!(e.triples.len(), 2);
        assert_eq!(table.stats.skipped_triples, 6);
    }

    #[test]
    fn rejects_a_wrong_top_level() {
        for bad in [
            "[]",
            r#"{"docs": {}}"#,
            r#"{"rows": []}"#,
            "not json",
            r#""docs""#,
        ] {
            let err = OpenIeTable::parse(bad, "bad.json").expect_err(bad);
            assert!(
                matches!(err, OpenIeError::Format { ref path, .. } if path == "bad.json"),
                "{err}"
            );
        }
        let missing =
            OpenIeTable::load(Path::new("/nonexistent/openie.json")).expect_err("no file");
        assert!(matches!(missing, OpenIeError::Read { .. }));
    }

    #[test]
    fn reads_python_nan_and_infinity_as_null() {
        let table = parse(
            r#"{"docs": [{"passage": "NaN \"Infinity\" é", "extracted_entities": []}], "avg": NaN,
                "x": [-Infinity, Infinity], "ok": "NaN"}"#,
        );
        assert_eq!(table.stats.imported, 1);
        assert!(table.get("NaN \"Infinity\" é").is_some());
        assert_eq!(
            python_constants_to_null(r#"{"a": "\\", "b": NaN}"#),
            r#"{"a": "\\", "b": null}"#
        );
        assert!(matches!(
            python_constants_to_null(r#"["NaN"]"#),
            Cow::Borrowed(_)
        ));
    }

    #[derive(Debug)]
    struct Echo;

    impl Extractor for Echo {
        fn name(&self) -> &str {
            "echo"
        }
        fn extract(&self, passages: &[PassageInput<'_>]) -> Result<Vec<Extraction>, OpenIeError> {
            Ok(passages
                .iter()
                .map(|p| Extraction {
                    entities: vec![p.title.to_string()],
                    triples: Vec::new(),
                })
                .collect())
        }
    }

    #[test]
    fn precomputed_answers_from_the_table_and_falls_back_in_order() {
        let table =
            parse(r#"{"docs": [{"passage": "A\nknown", "extracted_entities": ["Known"]}]}"#);
        let extractor = PrecomputedExtractor::new(Arc::new(table), Arc::new(Echo));
        let passages = [
            PassageInput {
                title: "B",
                text: "x",
            },
            PassageInput {
                title: "A",
                text: "known",
            },
            PassageInput {
                title: "C",
                text: "y",
            },
        ];
        let out = extractor.extract(&passages).expect("extracts");
        let firsts: Vec<&str> = out.iter().map(|e| e.entities[0].as_str()).collect();
        assert_eq!(firsts, vec!["B", "Known", "C"]);
        assert_eq!((extractor.hits(), extractor.misses()), (1, 2));
        assert_eq!(extractor.name(), "precomputed");
    }
}
