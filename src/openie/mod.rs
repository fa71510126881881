//! Open information extraction: entities and `(subject, relation, object)` triples per passage.
//!
//! - [`Extractor`] is the interface: [`llm::LlmExtractor`] (the generation model, JSON-constrained), beside
//!   [`fallback::FallbackExtractor`] (no model: capitalised and numeric spans, same-sentence relations) and
//!   [`import::PrecomputedExtractor`] (extractions computed elsewhere, in HippoRAG's JSON format).
//! - [`normalize_phrase`] turns an entity into the phrase-node key of the knowledge graph, as HippoRAG does.

pub mod anchor;
pub mod fallback;
pub mod import;
pub mod llm;

/// One passage to extract from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PassageInput<'a> {
    /// The passage's title (its document's title).
    pub title: &'a str,
    /// The passage's text.
    pub text: &'a str,
}

impl PassageInput<'_> {
    /// The key precomputed extractions are matched on: title, a newline, text (HippoRAG's `passage` field).
    pub fn key(&self) -> String {
        format!("{}\n{}", self.title, self.text)
    }
}

/// A `(subject, relation, object)` fact, as extracted (not normalised).
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Triple {
    /// The subject phrase.
    pub subject: String,
    /// The relation (predicate).
    pub relation: String,
    /// The object phrase.
    pub object: String,
}

/// What an extractor found in one passage.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Extraction {
    /// Named entities, in order of appearance, without duplicates.
    pub entities: Vec<String>,
    /// Triples.
    pub triples: Vec<Triple>,
}

/// Errors of the open-IE layer.
#[derive(Debug, thiserror::Error)]
pub enum OpenIeError {
    /// An extractions file could not be read.
    #[error("cannot read the open-IE file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// An extractions file is not in HippoRAG's format at all (individual bad rows are skipped, not errors).
    #[error("{path} is not a HippoRAG open-IE file: {reason}")]
    Format {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// The extractor itself failed (for example the model behind it).
    #[error("extraction failed: {0}")]
    Extract(String),
}

/// Extracts entities and triples from passages. Implementations are synchronous and may be CPU-bound: call them
/// from a blocking task.
pub trait Extractor: Send + Sync + std::fmt::Debug {
    /// Short name recorded with every extraction (`fallback`, `precomputed`, a model name, ...).
    fn name(&self) -> &str;
    /// One [`Extraction`] per input, in order.
    fn extract(&self, passages: &[PassageInput<'_>]) -> Result<Vec<Extraction>, OpenIeError>;
    /// Whether extractions are worth caching per passage content (costly extractors, such as an LLM's): the
    /// graph index then reuses them for identical passages under the same [`Extractor::name`].
    fn cacheable(&self) -> bool {
        false
    }
    /// The extraction the knowledge graph stores, made from one this extractor returned (fresh or from the cache,
    /// which keeps what [`Extractor::extract`] returned): unchanged by default.
    fn refine(&self, extraction: Extraction) -> Extraction {
        extraction
    }
    /// The named entities of a question (query understanding for `hipporag`): by default those `extract` finds
    /// in the question taken as a passage.
    fn question_entities(&self, question: &str) -> Result<Vec<String>, OpenIeError> {
        let input = PassageInput {
            title: "",
            text: question,
        };
        Ok(self
            .extract(&[input])?
            .pop()
            .map(|e| e.entities)
            .unwrap_or_default())
    }
}

/// The phrase-node key of an entity, as HippoRAG normalises it: lowercase, every character outside `[a-z0-9]`
/// becomes a space, runs of spaces collapse to one, and the ends are trimmed. Non-ASCII letters become spaces too
/// (as in HippoRAG), so `"Café Müller"` gives `"caf m ller"`.
pub fn normalize_phrase(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut space = true;
    for c in s.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            out.push(c);
            space = false;
        } else if !space {
            out.push(' ');
            space = true;
        }
    }
    if out.ends_with(' ') {
        out.pop();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_as_hipporag() {
        assert_eq!(
            normalize_phrase("  The Beatles' \"Abbey Road\"! "),
            "the beatles abbey road"
        );
        assert_eq!(normalize_phrase("U.S.A."), "u s a");
        assert_eq!(normalize_phrase("1,000"), "1 000");
        assert_eq!(normalize_phrase("Café Müller"), "caf m ller");
        assert_eq!(normalize_phrase("--"), "");
    }

    #[test]
    fn passage_key_joins_title_and_text() {
        let p = PassageInput {
            title: "T",
            text: "body",
        };
        assert_eq!(p.key(), "T\nbody");
    }
}
