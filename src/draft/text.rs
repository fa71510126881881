//! Stage 1's text: passages `(title, text)` from files (plain text and Markdown split at blank lines; a JSON
//! array or JSON lines of objects with `text` and an optional `title`, as MuSiQue's corpus) or from the store,
//! tokenized with the target's tokenizer.

use std::path::Path;

use engram_draft::data::Example;
use engram_engine::ModelTokenizer;
use serde::Deserialize;

use super::DraftCommandError;

#[derive(Deserialize)]
struct JsonPassage {
    #[serde(default)]
    title: String,
    text: String,
}

/// The passages of one file, by extension: `.txt`/`.md` (paragraphs), `.json` (an array of `{title?, text}`),
/// `.jsonl` (one such object per line).
pub fn read_passages(path: &Path) -> Result<Vec<(String, String)>, DraftCommandError> {
    let bad = |reason: String| DraftCommandError::Text(format!("{}: {reason}", path.display()));
    let body = fs_err::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    let title = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let passages: Vec<(String, String)> = match ext {
        "txt" | "md" => body
            .split("\n\n")
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|p| (title.clone(), p.to_string()))
            .collect(),
        "json" => serde_json::from_str::<Vec<JsonPassage>>(&body)
            .map_err(|e| {
                bad(format!(
                    "expected an array of {{\"title\", \"text\"}} objects: {e}"
                ))
            })?
            .into_iter()
            .map(|p| (p.title, p.text))
            .collect(),
        "jsonl" => body
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| {
                serde_json::from_str::<JsonPassage>(l)
                    .map(|p| (p.title, p.text))
                    .map_err(|e| bad(format!("line {}: {e}", i + 1)))
            })
            .collect::<Result<_, _>>()?,
        other => {
            return Err(bad(format!(
                "unsupported extension `{other}` (txt, md, json or jsonl)"
            )))
        }
    };
    Ok(passages)
}

/// Each passage as `title\ntext`, tokenized without special tokens, as plain text.
pub fn tokenize_passages(
    tokenizer: &ModelTokenizer,
    passages: &[(String, String)],
) -> Result<Vec<Example>, DraftCommandError> {
    passages
        .iter()
        .map(|(title, text)| {
            let joined = if title.is_empty() {
                text.clone()
            } else {
                format!("{title}\n{text}")
            };
            tokenizer
                .encode(&joined, false)
                .map(Example::plain)
                .map_err(|e| DraftCommandError::Text(e.to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_format_gives_passages_and_a_bad_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let md = dir.path().join("notes.md");
        std::fs::write(&md, "First paragraph.\n\nSecond one.\n\n\n").unwrap();
        assert_eq!(
            read_passages(&md).unwrap(),
            vec![
                ("notes".to_string(), "First paragraph.".to_string()),
                ("notes".to_string(), "Second one.".to_string())
            ]
        );
        let json = dir.path().join("corpus.json");
        std::fs::write(
            &json,
            r#"[{"title":"T","text":"Body.","idx":3},{"text":"No title."}]"#,
        )
        .unwrap();
        assert_eq!(read_passages(&json).unwrap().len(), 2);
        let jsonl = dir.path().join("c.jsonl");
        std::fs::write(&jsonl, "{\"text\":\"a\"}\n\nnot json\n").unwrap();
        let msg = read_passages(&jsonl).unwrap_err().to_string();
        assert!(msg.contains("c.jsonl") && msg.contains("line 3"), "{msg}");
        let pdf = dir.path().join("x.pdf");
        std::fs::write(&pdf, "%PDF").unwrap();
        assert!(read_passages(&pdf)
            .unwrap_err()
            .to_string()
            .contains("unsupported"));
    }
}
