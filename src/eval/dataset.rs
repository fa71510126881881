//! Evaluation data formats: MuSiQue style (questions with `paragraphs[].is_supporting`, corpus `[{"title","text"}]`)
//! and HotpotQA distractor style (questions with `supporting_facts`, corpus `{title: [sentences]}`).

use super::EvalError;
use crate::store::NewDocument;
use serde_json::Value;
use std::collections::HashSet;
use std::path::Path;

/// How gold passages are identified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GoldStyle {
    /// By exact `title + "\n" + text` (MuSiQue).
    TitleAndText,
    /// By title (HotpotQA).
    Title,
}

impl GoldStyle {
    /// The gold key of a document.
    pub fn key(self, title: &str, text: &str) -> String {
        match self {
            GoldStyle::TitleAndText => format!("{}\n{}", title.trim(), text.trim()),
            GoldStyle::Title => title.trim().to_string(),
        }
    }
}

/// A question and the keys of its gold passages.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalQuestion {
    /// Question id.
    pub id: String,
    /// Question text.
    pub question: String,
    /// Gold keys (see [`GoldStyle`]).
    pub gold: HashSet<String>,
    /// Accepted answers: `answer` and its `answer_aliases` (empty when the file has none).
    pub answers: Vec<String>,
}

fn read_json(path: &Path, what: &'static str) -> Result<Value, EvalError> {
    let bytes = std::fs::read(path).map_err(|source| EvalError::Read {
        path: path.display().to_string(),
        source,
    })?;
    serde_json::from_slice(&bytes).map_err(|e| EvalError::Format {
        path: path.display().to_string(),
        what,
        reason: e.to_string(),
    })
}

/// Reads a questions file, detecting its style from the first question.
pub fn load_questions(path: &Path) -> Result<(Vec<EvalQuestion>, GoldStyle), EvalError> {
    let bad = |reason: String| EvalError::Format {
        path: path.display().to_string(),
        what: "questions",
        reason,
    };
    let value = read_json(path, "questions")?;
    let items = value
        .as_array()
        .ok_or_else(|| bad("expected a JSON array of questions".into()))?;
    let style = match items.first() {
        Some(q) if q.get("paragraphs").is_some() => GoldStyle::TitleAndText,
        Some(q) if q.get("supporting_facts").is_some() => GoldStyle::Title,
        Some(_) => {
            return Err(bad(
                "questions need `paragraphs` (MuSiQue) or `supporting_facts` (HotpotQA)".into(),
            ))
        }
        None => return Err(bad("no questions".into())),
    };
    let mut out = Vec::with_capacity(items.len());
    for (i, q) in items.iter().enumerate() {
        let text = q
            .get("question")
            .and_then(Value::as_str)
            .ok_or_else(|| bad(format!("question {i}: `question` must be a string")))?;
        let id = q
            .get("id")
            .or_else(|| q.get("_id"))
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| i.to_string());
        let mut gold = HashSet::new();
        match style {
            GoldStyle::TitleAndText => {
                let paragraphs = q
                    .get("paragraphs")
                    .and_then(Value::as_array)
                    .ok_or_else(|| bad(format!("question {i}: `paragraphs` must be an array")))?;
                for p in paragraphs {
                    if p.get("is_supporting").and_then(Value::as_bool) == Some(true) {
                        let title = p.get("title").and_then(Value::as_str).unwrap_or("");
                        let body = p
                            .get("paragraph_text")
                            .and_then(Value::as_str)
                            .unwrap_or("");
                        gold.insert(style.key(title, body));
                    }
                }
            }
            GoldStyle::Title => {
                let facts = q
                    .get("supporting_facts")
                    .and_then(Value::as_array)
                    .ok_or_else(|| {
                        bad(format!("question {i}: `supporting_facts` must be an array"))
                    })?;
                for f in facts {
                    if let Some(title) = f.get(0).and_then(Value::as_str) {
                        gold.insert(style.key(title, ""));
                    }
                }
            }
        }
        let mut answers: Vec<String> = q
            .get("answer")
            .and_then(Value::as_str)
            .map(str::to_string)
            .into_iter()
            .collect();
        if let Some(aliases) = q.get("answer_aliases").and_then(Value::as_array) {
            answers.extend(aliases.iter().filter_map(Value::as_str).map(str::to_string));
        }
        out.push(EvalQuestion {
            id,
            question: text.to_string(),
            gold,
            answers,
        });
    }
    Ok((out, style))
}

/// Reads a corpus: a JSON array of `{"title","text"}` (MuSiQue) or an object mapping titles to sentence lists
/// (HotpotQA; sentences are concatenated, with a space where they do not carry one).
pub fn load_corpus(path: &Path) -> Result<Vec<NewDocument>, EvalError> {
    let source = path.display().to_string();
    let value = read_json(path, "corpus")?;
    let bad = |reason: String| EvalError::Format {
        path: source.clone(),
        what: "corpus",
        reason,
    };
    let doc = |title: &str, text: String| NewDocument {
        title: title.to_string(),
        text,
        metadata: Value::Null,
        source: Some(source.clone()),
        media_type: "application/json".into(),
    };
    match &value {
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                let title = item.get("title").and_then(Value::as_str).unwrap_or("");
                let text = item
                    .get("text")
                    .and_then(Value::as_str)
                    .ok_or_else(|| bad(format!("element {i}: `text` must be a string")))?;
                Ok(doc(title, text.to_string()))
            })
            .collect(),
        Value::Object(map) => map
            .iter()
            .map(|(title, sentences)| {
                let sentences = sentences
                    .as_array()
                    .ok_or_else(|| bad(format!("`{title}`: expected a list of sentences")))?;
                let mut text = String::new();
                for s in sentences {
                    let s = s
                        .as_str()
                        .ok_or_else(|| bad(format!("`{title}`: sentences must be strings")))?;
                    if !text.is_empty() && !text.ends_with(' ') && !s.starts_with(' ') {
                        text.push(' ');
                    }
                    text.push_str(s);
                }
                Ok(doc(title, text.trim().to_string()))
            })
            .collect(),
        _ => Err(bad(
            "expected an array of {title, text} or an object of title → sentences".into(),
        )),
    }
}
