//! File loaders: turn uploaded bytes into [`NewDocument`]s.
//!
//! [`load_file`] dispatches on the file name's extension (see [`SUPPORTED_EXTENSIONS`]) and
//! extracts the canonical text that passage offsets will point into.

use std::path::Path;

use scraper::{ElementRef, Html, Node, Selector};
use serde_json::Value;

use crate::document::NewDocument;
use crate::nesting::{self, TooDeep};

/// Depth limit of [`load_file`], the default of `limits.max_nesting_depth`.
pub const DEFAULT_MAX_NESTING_DEPTH: usize = 128;

/// Stack of the thread that runs the PDF library: its parser recurses per nesting level, and the depth scan
/// before it cannot see into every kind of stream, so this is the backstop.
const PDF_STACK_BYTES: usize = 256 << 20;

/// Limits a loader enforces on its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadLimits {
    /// Deepest nesting of HTML elements, PDF arrays and dictionaries, JSON arrays and objects, and Markdown block
    /// quotes and lists.
    pub max_nesting_depth: usize,
}

impl Default for LoadLimits {
    fn default() -> Self {
        Self {
            max_nesting_depth: DEFAULT_MAX_NESTING_DEPTH,
        }
    }
}

/// Why a file could not be turned into documents.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file extension is not one of [`SUPPORTED_EXTENSIONS`].
    #[error(
        "unsupported file type {} for '{file}': use .txt, .md, .html, .pdf, .json or .jsonl",
        describe_extension(.extension)
    )]
    UnsupportedType {
        /// The file name as given.
        file: String,
        /// The (lowercased) extension without the dot; empty when the name has none.
        extension: String,
    },
    /// A text-based file (txt, md, html, json, jsonl) is not valid UTF-8.
    #[error("'{file}' is not valid UTF-8 text: re-save it with UTF-8 encoding")]
    InvalidUtf8 {
        /// The file name as given.
        file: String,
    },
    /// A `.pdf` file is not a PDF, or its text could not be extracted.
    #[error(
        "could not read PDF '{file}': {reason}; upload a valid, unencrypted PDF with a text layer"
    )]
    InvalidPdf {
        /// The file name as given.
        file: String,
        /// What went wrong while parsing.
        reason: String,
    },
    /// A `.json` corpus is not `[{"title", "text"}, ...]`, or a `.jsonl` line is not such an object.
    #[error(
        "invalid JSON in '{file}'{}: {reason}; expected [{{\"title\": ..., \"text\": ...}}, ...] \
         in .json files, or one such object per line in .jsonl files",
        describe_line(.line)
    )]
    InvalidJson {
        /// The file name as given.
        file: String,
        /// The 1-based line number of the offending line of a `.jsonl` file; `None` for `.json`.
        line: Option<usize>,
        /// What is wrong, naming the element index or field where relevant.
        reason: String,
    },
    /// The file nests deeper than `limits.max_nesting_depth`.
    #[error(
        "'{file}' nests {what} more than {limit} deep (limits.max_nesting_depth); flatten it or raise the limit"
    )]
    NestingTooDeep {
        /// The file name as given.
        file: String,
        /// What nests: `HTML elements`, `PDF arrays and dictionaries`, ...
        what: &'static str,
        /// The limit passed.
        limit: usize,
    },
    /// Nothing but whitespace remained after text extraction.
    #[error(
        "'{file}' contains no text after extraction: upload a file with some text \
         (scanned PDFs without a text layer are not supported)"
    )]
    EmptyText {
        /// The file name as given.
        file: String,
    },
}

impl LoadError {
    /// A stable, machine-readable error code for API responses.
    pub fn code(&self) -> &'static str {
        match self {
            LoadError::UnsupportedType { .. } => "unsupported_media_type",
            LoadError::InvalidUtf8 { .. } => "invalid_utf8",
            LoadError::InvalidPdf { .. } => "invalid_pdf",
            LoadError::InvalidJson { .. } => "invalid_json",
            LoadError::EmptyText { .. } => "empty_text",
            LoadError::NestingTooDeep { .. } => "nesting_too_deep",
        }
    }
}

fn describe_extension(extension: &str) -> String {
    if extension.is_empty() {
        "(no extension)".to_owned()
    } else {
        format!("'.{extension}'")
    }
}

fn describe_line(line: &Option<usize>) -> String {
    match line {
        Some(n) => format!(" at line {n}"),
        None => String::new(),
    }
}

/// File extensions (lowercase, without the dot) that [`load_file`] accepts.
pub const SUPPORTED_EXTENSIONS: &[&str] = &[
    "txt", "md", "markdown", "html", "htm", "pdf", "json", "jsonl",
];

/// Loads the file `file_name` with contents `bytes` into one or more documents.
///
/// The format is chosen by the lowercased extension of `file_name`:
///
/// * `txt`: UTF-8 text (BOM stripped, CRLF → LF); title = file stem.
/// * `md`, `markdown`: like `txt`, the Markdown source is kept as the text; title = first ATX
///   heading (outside code fences), else the file stem.
/// * `html`, `htm`: visible `<body>` text, block elements separated by blank lines and inline
///   whitespace collapsed; title = `<title>`, else the first `<h1>`, else the file stem.
/// * `pdf`: extracted text with collapsed spaces and paragraph breaks kept; title = file stem.
/// * `json`: a corpus `[{"title": string, "text": string, "metadata"?: object}, ...]` (or one
///   such object) → one document per element. A missing title becomes `"{stem} #{index}"`
///   (0-based index). Without `metadata`, any extra fields of the element (e.g. `"idx"`) are
///   kept as the metadata object.
/// * `jsonl`: one such object per non-empty line; a missing title becomes `"{stem} #{line}"`
///   (1-based line number).
///
/// Every document gets `source = Some(file_name)`. Single-document formats fail with
/// [`LoadError::EmptyText`] when no text remains; corpus formats reject whitespace-only `text`
/// fields with [`LoadError::InvalidJson`]. Nesting is limited to [`DEFAULT_MAX_NESTING_DEPTH`]
/// ([`load_file_with`] takes the limits).
pub fn load_file(file_name: &str, bytes: &[u8]) -> Result<Vec<NewDocument>, LoadError> {
    load_file_with(file_name, bytes, &LoadLimits::default())
}

/// [`load_file`] with `limits`: input nested deeper than `limits.max_nesting_depth` fails with
/// [`LoadError::NestingTooDeep`] before any parser runs. CPU-bound: call it off the async threads.
pub fn load_file_with(
    file_name: &str,
    bytes: &[u8],
    limits: &LoadLimits,
) -> Result<Vec<NewDocument>, LoadError> {
    let depth = limits.max_nesting_depth;
    let too_deep = |what: &'static str| {
        move |TooDeep { limit }| LoadError::NestingTooDeep {
            file: file_name.to_owned(),
            what,
            limit,
        }
    };
    let extension = Path::new(file_name)
        .extension()
        .map(|e| e.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    let stem = file_stem(file_name);
    let doc = match extension.as_str() {
        "txt" => {
            let text = normalize_newlines(decode_utf8(file_name, bytes)?);
            single(file_name, stem, text, "text/plain")
        }
        "md" | "markdown" => {
            let text = normalize_newlines(decode_utf8(file_name, bytes)?);
            nesting::markdown(&text, depth).map_err(too_deep("block quotes and lists"))?;
            let title = markdown_title(&text).unwrap_or(stem);
            single(file_name, title, text, "text/markdown")
        }
        "html" | "htm" => {
            let source = decode_utf8(file_name, bytes)?;
            nesting::html(source, depth).map_err(too_deep("HTML elements"))?;
            let (title, text) = html_to_text(source);
            single(file_name, title.unwrap_or(stem), text, "text/html")
        }
        "pdf" => {
            nesting::pdf(bytes, depth).map_err(too_deep("PDF arrays and dictionaries"))?;
            let text = pdf_to_text(file_name, bytes)?;
            single(file_name, stem, text, "application/pdf")
        }
        "json" | "jsonl" => {
            let source = decode_utf8(file_name, bytes)?;
            nesting::json(source.as_bytes(), depth).map_err(too_deep("JSON arrays and objects"))?;
            return if extension == "json" {
                load_json(file_name, &stem, source)
            } else {
                load_jsonl(file_name, &stem, source)
            };
        }
        _ => {
            return Err(LoadError::UnsupportedType {
                file: file_name.to_owned(),
                extension,
            })
        }
    };
    if doc.text.trim().is_empty() {
        return Err(LoadError::EmptyText {
            file: file_name.to_owned(),
        });
    }
    Ok(vec![doc])
}

fn single(file_name: &str, title: String, text: String, media_type: &str) -> NewDocument {
    NewDocument {
        title,
        text,
        metadata: Value::Null,
        source: Some(file_name.to_owned()),
        media_type: media_type.to_owned(),
    }
}

/// The file name without directories and extension; the whole name if that would be empty.
fn file_stem(file_name: &str) -> String {
    Path::new(file_name)
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| file_name.to_owned())
}

/// Decodes UTF-8 (stripping a byte-order mark) or fails with [`LoadError::InvalidUtf8`].
fn decode_utf8<'a>(file_name: &str, bytes: &'a [u8]) -> Result<&'a str, LoadError> {
    let text = std::str::from_utf8(bytes).map_err(|_| LoadError::InvalidUtf8 {
        file: file_name.to_owned(),
    })?;
    Ok(text.strip_prefix('\u{feff}').unwrap_or(text))
}

fn normalize_newlines(text: &str) -> String {
    text.replace("\r\n", "\n")
}

// ---------------------------------------------------------------------------------------------
// Markdown

/// The text of the first ATX heading (`# Title`, any level) outside fenced code blocks.
fn markdown_title(text: &str) -> Option<String> {
    let mut fence: Option<(char, usize)> = None;
    for line in text.lines() {
        let indent = line.len() - line.trim_start_matches(' ').len();
        if indent > 3 {
            continue;
        }
        let body = &line[indent..];
        // Fenced code blocks: ``` or ~~~ (at least three) open and close a fence.
        let fence_char = body.chars().next().filter(|c| *c == '`' || *c == '~');
        if let Some(fc) = fence_char {
            let run = body.len() - body.trim_start_matches(fc).len();
            if run >= 3 {
                match fence {
                    None => fence = Some((fc, run)),
                    Some((open, len)) if open == fc && run >= len => {
                        if body.trim_start_matches(fc).trim().is_empty() {
                            fence = None;
                        }
                    }
                    Some(_) => {}
                }
                continue;
            }
        }
        if fence.is_some() {
            continue;
        }
        let hashes = body.len() - body.trim_start_matches('#').len();
        if !(1..=6).contains(&hashes) {
            continue;
        }
        let rest = &body[hashes..];
        if !(rest.is_empty() || rest.starts_with([' ', '\t'])) {
            continue;
        }
        // Strip an optional closing sequence of '#'s (only when preceded by whitespace).
        let mut title = rest.trim();
        let without_closing = title.trim_end_matches('#');
        if without_closing.is_empty() || without_closing.ends_with([' ', '\t']) {
            title = without_closing.trim();
        }
        if !title.is_empty() {
            return Some(title.to_owned());
        }
    }
    None
}

// ---------------------------------------------------------------------------------------------
// HTML

/// Elements whose content is never visible text.
const HTML_SKIPPED: &[&str] = &["script", "style", "noscript", "template", "head", "title"];

/// Elements that start a new block (separated from their surroundings by a blank line).
const HTML_BLOCKS: &[&str] = &[
    "address",
    "article",
    "aside",
    "blockquote",
    "br",
    "caption",
    "dd",
    "details",
    "dialog",
    "div",
    "dl",
    "dt",
    "fieldset",
    "figcaption",
    "figure",
    "footer",
    "form",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "header",
    "hgroup",
    "hr",
    "legend",
    "li",
    "main",
    "menu",
    "nav",
    "ol",
    "p",
    "pre",
    "section",
    "summary",
    "table",
    "tbody",
    "tfoot",
    "thead",
    "tr",
    "ul",
];

/// Elements that are separated from their neighbours by a space (table cells).
const HTML_SPACED: &[&str] = &["td", "th"];

/// Collects visible text, collapsing inline whitespace and separating blocks by blank lines.
#[derive(Default)]
struct TextCollector {
    out: String,
    pending_space: bool,
    pending_break: bool,
}

impl TextCollector {
    fn push_text(&mut self, text: &str) {
        for c in text.chars() {
            if c.is_whitespace() {
                self.pending_space = true;
                continue;
            }
            if !self.out.is_empty() {
                if self.pending_break {
                    self.out.push_str("\n\n");
                } else if self.pending_space {
                    self.out.push(' ');
                }
            }
            self.pending_break = false;
            self.pending_space = false;
            self.out.push(c);
        }
    }

    /// Collects the text under `element`, depth first, with an explicit stack (no recursion, whatever the
    /// nesting): a block element marks a break before and after its content, a table cell a space.
    fn walk(&mut self, element: ElementRef<'_>) {
        enum Step<N> {
            Enter(N),
            Leave { block: bool, spaced: bool },
        }
        let mut stack: Vec<Step<_>> = element.children().rev().map(Step::Enter).collect();
        while let Some(step) = stack.pop() {
            let node = match step {
                Step::Leave { block, spaced } => {
                    self.pending_break |= block;
                    self.pending_space |= spaced;
                    continue;
                }
                Step::Enter(node) => node,
            };
            match node.value() {
                Node::Text(text) => self.push_text(text),
                Node::Element(el) => {
                    let name = el.name();
                    if HTML_SKIPPED.contains(&name) {
                        continue;
                    }
                    let block = HTML_BLOCKS.contains(&name);
                    let spaced = HTML_SPACED.contains(&name);
                    self.pending_break |= block;
                    self.pending_space |= spaced;
                    stack.push(Step::Leave { block, spaced });
                    stack.extend(node.children().rev().map(Step::Enter));
                }
                _ => {}
            }
        }
    }
}

fn collapse_whitespace(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Returns the page title (if any) and the visible body text.
fn html_to_text(source: &str) -> (Option<String>, String) {
    let html = Html::parse_document(source);
    let select_first = |css: &str| -> Option<String> {
        let selector = Selector::parse(css).ok()?;
        html.select(&selector)
            .map(|el| collapse_whitespace(&el.text().collect::<String>()))
            .find(|t| !t.is_empty())
    };
    let title = select_first("title").or_else(|| select_first("h1"));

    let mut collector = TextCollector::default();
    let body = Selector::parse("body")
        .ok()
        .and_then(|s| html.select(&s).next());
    collector.walk(body.unwrap_or_else(|| html.root_element()));
    (title, collector.out)
}

// ---------------------------------------------------------------------------------------------
// PDF

fn pdf_to_text(file_name: &str, bytes: &[u8]) -> Result<String, LoadError> {
    let invalid = |reason: String| LoadError::InvalidPdf {
        file: file_name.to_owned(),
        reason,
    };
    if !bytes.starts_with(b"%PDF-") {
        return Err(invalid(
            "the file does not start with the '%PDF-' header".to_owned(),
        ));
    }
    // pdf-extract can panic on malformed input; treat that as an invalid PDF. It runs on a thread of its own with
    // a large stack, as its parser recurses per nesting level.
    let extracted = std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("pdf-extract".into())
            .stack_size(PDF_STACK_BYTES)
            .spawn_scoped(scope, || {
                std::panic::catch_unwind(|| extract_pdf_text(bytes))
            })
            .map_err(|e| invalid(format!("cannot start the PDF parser: {e}")))?
            .join()
            .map_err(|_| invalid("the PDF parser failed".to_owned()))
    })?
    .map_err(|panic| invalid(format!("the PDF parser failed: {}", panic_message(&*panic))))?
    .map_err(invalid)?;
    Ok(normalize_pdf_text(&extracted))
}

/// Parses the PDF, checks its page tree, decrypts it when it is encrypted with the empty password (as
/// `pdf_extract::extract_text_from_mem` does), and extracts its text.
fn extract_pdf_text(bytes: &[u8]) -> Result<String, String> {
    let mut doc = lopdf::Document::load_mem(bytes).map_err(|e| e.to_string())?;
    check_page_tree(&doc)?;
    let mut text = String::new();
    let mut output = pdf_extract::PlainTextOutput::new(&mut text);
    let done = if doc.is_encrypted() {
        pdf_extract::output_doc_encrypted(&mut doc, &mut output, "")
    } else {
        pdf_extract::output_doc(&doc, &mut output)
    };
    done.map_err(|e| e.to_string())?;
    Ok(text)
}

/// Refuses a page whose `/Parent` chain loops: pdf-extract climbs that chain for inherited attributes without
/// remembering where it has been, so a loop would spin forever (found by the `load_pdf` fuzz target).
fn check_page_tree(doc: &lopdf::Document) -> Result<(), String> {
    for (page, id) in doc.get_pages() {
        let mut seen = std::collections::HashSet::from([id]);
        let mut node = doc.get_dictionary(id).ok();
        while let Some(dict) = node {
            let Ok(parent) = dict.get(b"Parent").and_then(lopdf::Object::as_reference) else {
                break;
            };
            if !seen.insert(parent) {
                return Err(format!("the page tree loops above page {page}"));
            }
            node = doc.get_dictionary(parent).ok();
        }
    }
    Ok(())
}

/// The message of a panic payload (`&str` or `String`), or `unknown error`.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown error".to_owned())
}

/// Collapses runs of spaces, keeps single line breaks, turns 2+ line breaks (or page breaks)
/// into one blank line, and trims the result.
fn normalize_pdf_text(raw: &str) -> String {
    let unified = raw.replace("\r\n", "\n").replace(['\r', '\u{c}'], "\n\n");
    let mut out = String::new();
    let mut newlines = 0usize;
    for line in unified.split('\n') {
        let line = collapse_whitespace(line);
        if line.is_empty() {
            newlines += 1;
            continue;
        }
        if !out.is_empty() {
            out.push_str(if newlines > 0 { "\n\n" } else { "\n" });
        }
        out.push_str(&line);
        newlines = 0;
    }
    out
}

// ---------------------------------------------------------------------------------------------
// JSON corpora

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Converts one corpus element into a document; the error is the reason without location.
fn corpus_document(
    file_name: &str,
    value: Value,
    fallback_title: impl FnOnce() -> String,
) -> Result<NewDocument, String> {
    let Value::Object(mut map) = value else {
        return Err(format!(
            "expected an object with `title` and `text` fields, got {}",
            json_type(&value)
        ));
    };
    let text = match map.remove("text") {
        Some(Value::String(s)) => s,
        None => return Err("missing field `text`".to_owned()),
        Some(other) => {
            return Err(format!(
                "field `text` must be a string, got {}",
                json_type(&other)
            ))
        }
    };
    if text.trim().is_empty() {
        return Err("`text` is empty".to_owned());
    }
    let title = match map.remove("title") {
        Some(Value::String(s)) if !s.trim().is_empty() => s.trim().to_owned(),
        Some(Value::String(_)) | Some(Value::Null) | None => fallback_title(),
        Some(other) => {
            return Err(format!(
                "field `title` must be a string, got {}",
                json_type(&other)
            ))
        }
    };
    let metadata = match map.remove("metadata") {
        Some(m @ (Value::Object(_) | Value::Null)) => m,
        Some(other) => {
            return Err(format!(
                "field `metadata` must be an object, got {}",
                json_type(&other)
            ))
        }
        None if map.is_empty() => Value::Null,
        None => Value::Object(map),
    };
    Ok(NewDocument {
        title,
        text: normalize_newlines(&text),
        metadata,
        source: Some(file_name.to_owned()),
        media_type: "application/json".to_owned(),
    })
}

/// A JSON syntax error as a [`LoadError`]: serde_json's own depth limit as [`LoadError::NestingTooDeep`].
fn json_error(file_name: &str, line: Option<usize>, e: serde_json::Error) -> LoadError {
    if e.to_string().starts_with("recursion limit exceeded") {
        return LoadError::NestingTooDeep {
            file: file_name.to_owned(),
            what: "JSON arrays and objects",
            limit: SERDE_JSON_DEPTH,
        };
    }
    LoadError::InvalidJson {
        file: file_name.to_owned(),
        line,
        reason: e.to_string(),
    }
}

/// serde_json's own nesting limit, below which `limits.max_nesting_depth` is effective for JSON.
pub const SERDE_JSON_DEPTH: usize = 127;

fn load_json(file_name: &str, stem: &str, source: &str) -> Result<Vec<NewDocument>, LoadError> {
    let invalid = |reason: String| LoadError::InvalidJson {
        file: file_name.to_owned(),
        line: None,
        reason,
    };
    let value: Value = serde_json::from_str(source).map_err(|e| json_error(file_name, None, e))?;
    let elements = match value {
        Value::Array(items) => items,
        object @ Value::Object(_) => vec![object],
        other => {
            return Err(invalid(format!(
                "expected an array of objects, got {}",
                json_type(&other)
            )))
        }
    };
    if elements.is_empty() {
        return Err(invalid("the array contains no documents".to_owned()));
    }
    elements
        .into_iter()
        .enumerate()
        .map(|(index, element)| {
            corpus_document(file_name, element, || format!("{stem} #{index}"))
                .map_err(|reason| invalid(format!("element {index}: {reason}")))
        })
        .collect()
}

fn load_jsonl(file_name: &str, stem: &str, source: &str) -> Result<Vec<NewDocument>, LoadError> {
    let mut docs = Vec::new();
    for (i, line) in source.lines().enumerate() {
        let line_no = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let invalid = |reason: String| LoadError::InvalidJson {
            file: file_name.to_owned(),
            line: Some(line_no),
            reason,
        };
        let value: Value =
            serde_json::from_str(line).map_err(|e| json_error(file_name, Some(line_no), e))?;
        let doc =
            corpus_document(file_name, value, || format!("{stem} #{line_no}")).map_err(invalid)?;
        docs.push(doc);
    }
    if docs.is_empty() {
        return Err(LoadError::EmptyText {
            file: file_name.to_owned(),
        });
    }
    Ok(docs)
}

/// Helpers shared by unit and integration tests.
#[doc(hidden)]
pub mod test_support {
    /// Builds a minimal one-page PDF that shows `text` in Helvetica (WinAnsiEncoding), with a
    /// correct cross-reference table. Characters outside Latin-1 are replaced by `?`.
    pub fn minimal_pdf(text: &str) -> Vec<u8> {
        let mut literal = Vec::new();
        for c in text.chars() {
            match c {
                '\\' | '(' | ')' => {
                    literal.push(b'\\');
                    literal.push(c as u8);
                }
                '\n' | '\r' => literal.push(b' '),
                c if (c as u32) < 0x80 || (0xA0..=0xFF).contains(&(c as u32)) => {
                    literal.push(c as u32 as u8)
                }
                _ => literal.push(b'?'),
            }
        }
        let mut content = b"BT /F1 12 Tf 72 720 Td (".to_vec();
        content.extend_from_slice(&literal);
        content.extend_from_slice(b") Tj ET");

        let mut stream_object = format!("<< /Length {} >>\nstream\n", content.len()).into_bytes();
        stream_object.extend_from_slice(&content);
        stream_object.extend_from_slice(b"\nendstream");

        let objects: Vec<Vec<u8>> = vec![
            b"<< /Type /Catalog /Pages 2 0 R >>".to_vec(),
            b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>".to_vec(),
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] \
              /Resources << /Font << /F1 5 0 R >> >> /Contents 4 0 R >>"
                .to_vec(),
            stream_object,
            b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>"
                .to_vec(),
        ];

        let mut pdf = b"%PDF-1.4\n%\xE2\xE3\xCF\xD3\n".to_vec();
        let mut offsets = Vec::with_capacity(objects.len());
        for (i, body) in objects.iter().enumerate() {
            offsets.push(pdf.len());
            pdf.extend_from_slice(format!("{} 0 obj\n", i + 1).as_bytes());
            pdf.extend_from_slice(body);
            pdf.extend_from_slice(b"\nendobj\n");
        }
        let xref_offset = pdf.len();
        pdf.extend_from_slice(format!("xref\n0 {}\n", objects.len() + 1).as_bytes());
        pdf.extend_from_slice(b"0000000000 65535 f \n");
        for offset in offsets {
            pdf.extend_from_slice(format!("{offset:010} 00000 n \n").as_bytes());
        }
        pdf.extend_from_slice(
            format!(
                "trailer\n<< /Size {} /Root 1 0 R >>\nstartxref\n{xref_offset}\n%%EOF\n",
                objects.len() + 1
            )
            .as_bytes(),
        );
        pdf
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::minimal_pdf;
    use super::*;

    fn load_one(name: &str, bytes: &[u8]) -> NewDocument {
        let mut docs = load_file(name, bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(docs.len(), 1);
        docs.remove(0)
    }

    #[test]
    fn supported_extensions_all_dispatch() {
        for ext in SUPPORTED_EXTENSIONS {
            let err = load_file(&format!("x.{ext}"), b"").unwrap_err();
            assert_ne!(err.code(), "unsupported_media_type", "{ext}: {err}");
        }
    }

    #[test]
    fn txt_strips_bom_and_normalises_crlf() {
        let doc = load_one("dir/Notes.TXT", b"\xEF\xBB\xBFLine one.\r\nLine two.\r\n");
        assert_eq!(doc.title, "Notes");
        assert_eq!(doc.text, "Line one.\nLine two.\n");
        assert_eq!(doc.media_type, "text/plain");
        assert_eq!(doc.metadata, Value::Null);
        assert_eq!(doc.source.as_deref(), Some("dir/Notes.TXT"));
    }

    #[test]
    fn txt_invalid_utf8() {
        let err = load_file("bad.txt", b"caf\xE9 au lait").unwrap_err();
        assert!(matches!(err, LoadError::InvalidUtf8 { ref file } if file == "bad.txt"));
        assert_eq!(err.code(), "invalid_utf8");
        assert!(err.to_string().contains("UTF-8"));
    }

    #[test]
    fn whitespace_only_is_empty_text() {
        for (name, bytes) in [
            ("a.txt", &b" \r\n\t "[..]),
            ("a.md", b"\n\n"),
            (
                "a.html",
                b"<html><head><title>T</title></head><body> <script>x()</script> </body></html>",
            ),
        ] {
            let err = load_file(name, bytes).unwrap_err();
            assert!(matches!(err, LoadError::EmptyText { .. }), "{name}: {err}");
            assert_eq!(err.code(), "empty_text");
        }
    }

    #[test]
    fn markdown_title_from_first_heading() {
        let src = "Intro line\n\n```sh\n# not a heading\n```\n\n## The *Harbour* ##\n\n# Later\n";
        let doc = load_one("guide.md", src.as_bytes());
        assert_eq!(doc.title, "The *Harbour*");
        assert_eq!(doc.text, src);
        assert_eq!(doc.media_type, "text/markdown");

        let doc = load_one(
            "plain.markdown",
            b"No heading here.\n#hashtag is not one either",
        );
        assert_eq!(doc.title, "plain");
    }

    #[test]
    fn html_ignores_script_and_style_and_picks_title() {
        let src = r#"<!DOCTYPE html><html><head><title>  The
            Market </title><style>body { color: red }</style>
            <script>var hidden = "secret";</script></head>
            <body><h1>Heading</h1><p>First   <b>bold</b>
            paragraph.</p><script>alert("no")</script><noscript>enable js</noscript>
            <ul><li>one</li><li>two</li></ul>line<br>break
            <table><tr><td>a</td><td>b</td></tr></table></body></html>"#;
        let doc = load_one("page.HTM", src.as_bytes());
        assert_eq!(doc.title, "The Market");
        assert_eq!(
            doc.text,
            "Heading\n\nFirst bold paragraph.\n\none\n\ntwo\n\nline\n\nbreak\n\na b"
        );
        assert!(!doc.text.contains("secret") && !doc.text.contains("color"));
        assert_eq!(doc.media_type, "text/html");
    }

    #[test]
    fn html_title_falls_back_to_h1_then_stem() {
        let doc = load_one("a.html", b"<body><h1> Big   News </h1><p>text</p></body>");
        assert_eq!(doc.title, "Big News");
        let doc = load_one("stem.html", b"<p>just text</p>");
        assert_eq!(doc.title, "stem");
        assert_eq!(doc.text, "just text");
    }

    #[test]
    fn html_invalid_utf8() {
        let err = load_file("x.html", b"<p>\xFF\xFE</p>").unwrap_err();
        assert!(matches!(err, LoadError::InvalidUtf8 { .. }));
    }

    #[test]
    fn pdf_text_is_extracted() {
        let bytes = minimal_pdf("The lighthouse (old) keeps watch over Brightwater Bay.");
        let doc = load_one("report.pdf", &bytes);
        assert_eq!(doc.title, "report");
        assert_eq!(doc.media_type, "application/pdf");
        for word in ["lighthouse", "(old)", "Brightwater", "Bay."] {
            assert!(
                doc.text.contains(word),
                "{word:?} missing from {:?}",
                doc.text
            );
        }
        assert_eq!(doc.text, doc.text.trim());
        assert!(!doc.text.contains("  "));
    }

    #[test]
    fn corrupt_pdf_is_invalid() {
        let err = load_file("broken.pdf", b"%PDF-1.4 garbage").unwrap_err();
        assert!(matches!(err, LoadError::InvalidPdf { .. }), "{err}");
        assert_eq!(err.code(), "invalid_pdf");

        // A truncated real PDF must not panic either.
        let bytes = minimal_pdf("Truncated document text");
        let err = load_file("cut.pdf", &bytes[..bytes.len() / 2]).unwrap_err();
        assert!(matches!(err, LoadError::InvalidPdf { .. }), "{err}");
    }

    #[test]
    fn random_bytes_pdf_is_invalid() {
        let mut state = 0x1234_5678_u32;
        let bytes: Vec<u8> = (0..512)
            .map(|_| {
                state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (state >> 24) as u8
            })
            .collect();
        let err = load_file("x.pdf", &bytes).unwrap_err();
        assert!(matches!(err, LoadError::InvalidPdf { .. }), "{err}");
    }

    #[test]
    fn mutated_pdfs_never_panic() {
        let original = minimal_pdf("Mutation testing keeps the parser honest.");
        let mut state = 0x9e37_79b9_u32;
        let mut next = move || {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            state >> 8
        };
        for round in 0..100 {
            let mut bytes = original.clone();
            for _ in 0..=(round % 16) {
                let i = 5 + next() as usize % (bytes.len() - 5);
                bytes[i] = next() as u8;
            }
            // Either some text comes out or a clean error; a panic would fail the test.
            if let Err(err) = load_file("m.pdf", &bytes) {
                assert!(
                    matches!(
                        err,
                        LoadError::InvalidPdf { .. } | LoadError::EmptyText { .. }
                    ),
                    "{err}"
                );
            }
        }
    }

    #[test]
    fn pdf_normalisation() {
        assert_eq!(
            normalize_pdf_text("  a   b \n c\n\n\n\nd\u{c}e  \r\n"),
            "a b\nc\n\nd\n\ne"
        );
    }

    #[test]
    fn unsupported_type() {
        let err = load_file("x.docx", b"PK\x03\x04").unwrap_err();
        assert!(
            matches!(err, LoadError::UnsupportedType { ref extension, .. } if extension == "docx")
        );
        assert_eq!(err.code(), "unsupported_media_type");
        assert_eq!(
            err.to_string(),
            "unsupported file type '.docx' for 'x.docx': use .txt, .md, .html, .pdf, .json or .jsonl"
        );
        let err = load_file("README", b"text").unwrap_err();
        assert!(err.to_string().contains("(no extension)"), "{err}");
    }

    #[test]
    fn json_corpus_of_two_documents() {
        let src = r#"[
            {"title": "Alpha", "text": "First text.", "metadata": {"lang": "en"}},
            {"text": "Second text.\r\nMore.", "idx": 7}
        ]"#;
        let docs = load_file("corpus.json", src.as_bytes()).unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].title, "Alpha");
        assert_eq!(docs[0].text, "First text.");
        assert_eq!(docs[0].metadata, serde_json::json!({"lang": "en"}));
        assert_eq!(docs[1].title, "corpus #1");
        assert_eq!(docs[1].text, "Second text.\nMore.");
        assert_eq!(docs[1].metadata, serde_json::json!({"idx": 7}));
        for d in &docs {
            assert_eq!(d.media_type, "application/json");
            assert_eq!(d.source.as_deref(), Some("corpus.json"));
        }

        let single = load_one("one.json", br#"{"title": "Solo", "text": "Only one."}"#);
        assert_eq!(single.title, "Solo");
    }

    #[test]
    fn json_errors_name_element_and_field() {
        let cases: &[(&str, &str)] = &[
            (
                r#"[{"title": "a", "text": "x"}, {"title": "b", "text": 5}]"#,
                "element 1: field `text` must be a string",
            ),
            (r#"[{"title": "a"}]"#, "element 0: missing field `text`"),
            (
                r#"[{"text": "ok"}, {"text": "ok"}, {"text": "ok"}, {"text": "  \n"}]"#,
                "element 3: `text` is empty",
            ),
            (
                r#"[{"title": 1, "text": "x"}]"#,
                "element 0: field `title` must be a string",
            ),
            (
                r#"[{"text": "x", "metadata": [1]}]"#,
                "element 0: field `metadata` must be an object",
            ),
            (r#"[1]"#, "element 0: expected an object"),
            (r#""just a string""#, "expected an array of objects"),
            (r#"[]"#, "no documents"),
            (r#"[{"text": "x"}"#, "EOF"),
        ];
        for (src, expected) in cases {
            let err = load_file("c.json", src.as_bytes()).unwrap_err();
            match &err {
                LoadError::InvalidJson { line, reason, .. } => {
                    assert_eq!(*line, None);
                    assert!(reason.contains(expected), "{reason:?} !~ {expected:?}");
                }
                other => panic!("{src}: unexpected {other:?}"),
            }
            assert_eq!(err.code(), "invalid_json");
        }
        let err = load_file("c.json", b"[\"\xFF\"]").unwrap_err();
        assert!(matches!(err, LoadError::InvalidUtf8 { .. }));
    }

    #[test]
    fn jsonl_documents_and_bad_line() {
        let src = "{\"title\": \"One\", \"text\": \"First.\"}\n\n{\"text\": \"Third line.\"}\r\n";
        let docs = load_file("notes.jsonl", src.as_bytes()).unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].title, "One");
        assert_eq!(docs[1].title, "notes #3");
        assert_eq!(docs[1].text, "Third line.");

        let src = "{\"title\": \"One\", \"text\": \"First.\"}\n{\"title\": \"Two\", \"text\": \n";
        let err = load_file("notes.jsonl", src.as_bytes()).unwrap_err();
        assert!(
            matches!(err, LoadError::InvalidJson { line: Some(2), .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("at line 2"), "{err}");

        let src = "{\"text\": \"ok\"}\n{\"title\": \"Two\"}\n";
        let err = load_file("notes.jsonl", src.as_bytes()).unwrap_err();
        match err {
            LoadError::InvalidJson { line, reason, .. } => {
                assert_eq!(line, Some(2));
                assert_eq!(reason, "missing field `text`");
            }
            other => panic!("unexpected {other:?}"),
        }

        let err = load_file("empty.jsonl", b"\n  \n").unwrap_err();
        assert!(matches!(err, LoadError::EmptyText { .. }));
    }

    /// Found by the `load_pdf` fuzz target: a page whose `/Parent` chain loops made the PDF library spin forever.
    #[test]
    fn fuzz_regression_pdf_page_tree_loop_is_invalid_pdf() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/fuzz/pdf-page-tree-loop.pdf");
        let err = load_file("loop.pdf", &std::fs::read(path).unwrap()).unwrap_err();
        assert_eq!(err.code(), "invalid_pdf", "{err}");
        assert!(err.to_string().contains("loops"), "{err}");
    }

    /// Found by the `load_pdf` fuzz target: the PDF library panics on a reference to a missing object.
    #[test]
    fn fuzz_regression_pdf_with_a_missing_object_is_invalid_pdf() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/fuzz/pdf-missing-object.pdf");
        let err = load_file("broken.pdf", &std::fs::read(path).unwrap()).unwrap_err();
        assert_eq!(err.code(), "invalid_pdf", "{err}");
    }

    #[test]
    fn fixture_files_load() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/docs");
        let load = |name: &str| load_file(name, &std::fs::read(dir.join(name)).unwrap());

        let txt = load("lighthouse.txt").unwrap();
        assert_eq!(txt[0].title, "lighthouse");
        assert!(txt[0].text.contains("Ottilie Marsh"));

        let md = load("harbour.md").unwrap();
        assert_eq!(md[0].title, "Port Aldwyn Harbour");

        let html = load("market.html").unwrap();
        assert_eq!(html[0].title, "Saturday Market at Port Aldwyn");
        assert!(html[0]
            .text
            .starts_with("Saturday Market\n\nEvery Saturday"));
        assert!(html[0].text.contains("Summer: 8 am to 2 pm\n\nWinter"));
        for hidden in [
            "should-never",
            "hidden script",
            "Enable JavaScript",
            "Georgia",
        ] {
            assert!(!html[0].text.contains(hidden), "{hidden}");
        }

        let pdf = load("sample.pdf").unwrap();
        assert!(
            pdf[0].text.contains("Gannet Rock lighthouse"),
            "{:?}",
            pdf[0].text
        );

        let notes = load("notes.jsonl").unwrap();
        assert_eq!(notes.len(), 3);
        assert_eq!(notes[2].title, "Weather note");

        assert_eq!(load("corrupt.pdf").unwrap_err().code(), "invalid_pdf");
        assert_eq!(
            load("bad.docx").unwrap_err().code(),
            "unsupported_media_type"
        );
    }

    #[test]
    fn minimal_pdf_has_consistent_xref() {
        let pdf = minimal_pdf("Hello");
        let tail = std::str::from_utf8(&pdf[pdf.len() - 30..]).unwrap();
        let startxref: usize = tail
            .rsplit("startxref\n")
            .next()
            .and_then(|t| t.lines().next())
            .and_then(|n| n.parse().ok())
            .unwrap();
        let xref = std::str::from_utf8(&pdf[startxref..]).unwrap();
        assert!(xref.starts_with("xref\n0 6\n0000000000 65535 f \n"));
        for (i, entry) in xref.lines().skip(3).take(5).enumerate() {
            assert_eq!(
                entry.len(),
                19,
                "xref entries are 20 bytes with the newline"
            );
            let offset: usize = entry[..10].parse().unwrap();
            assert!(
                pdf[offset..].starts_with(format!("{} 0 obj", i + 1).as_bytes()),
                "object {} not at {offset}",
                i + 1
            );
        }
    }
}
