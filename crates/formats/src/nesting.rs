//! Nesting-depth scans over raw input, run before a parser sees it, so that hostile nesting (20,000 `<div>`s, a
//! PDF array 1,000 deep, `[[[[...]]]]`) is refused with `nesting_too_deep` instead of costing a parser's
//! recursion, quadratic scope checks or the process's stack.
//!
//! Each scan is a single iterative pass that stops as soon as the depth passes the limit. They are deliberately
//! conservative approximations of what the real parser would build: a scan may count a little deeper than the
//! parsed tree (never shallower for the constructs that nest), which only matters for inputs near the limit.

use std::io::Read;

/// The input nests deeper than the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooDeep {
    /// The limit that was passed.
    pub limit: usize,
}

/// Counts nesting as a scan goes, failing once past `limit`.
#[derive(Debug, Clone, Copy)]
struct Depth {
    now: usize,
    limit: usize,
}

impl Depth {
    fn new(limit: usize) -> Self {
        Self { now: 0, limit }
    }

    fn open(&mut self) -> Result<(), TooDeep> {
        self.now += 1;
        if self.now > self.limit {
            return Err(TooDeep { limit: self.limit });
        }
        Ok(())
    }

    fn close(&mut self) {
        self.now = self.now.saturating_sub(1);
    }
}

// ---------------------------------------------------------------------------------------------
// JSON

/// Checks that JSON text nests arrays and objects at most `limit` deep (strings and escapes skipped). Malformed
/// JSON is not an error here: the parser reports it.
pub fn json(bytes: &[u8], limit: usize) -> Result<(), TooDeep> {
    let mut depth = Depth::new(limit);
    let mut in_string = false;
    let mut escaped = false;
    for &b in bytes {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => depth.open()?,
            b']' | b'}' => depth.close(),
            _ => {}
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// HTML

/// Elements that never have content.
const VOID: &[&str] = &[
    "area", "base", "basefont", "bgsound", "br", "col", "embed", "frame", "hr", "image", "img",
    "input", "keygen", "link", "meta", "param", "source", "track", "wbr",
];

/// Elements whose end tag may be left out (the parser closes them at the next sibling): not counted, so that
/// sloppy but ordinary pages (`<li>` or `<p>` never closed) are not mistaken for deep ones.
const OPTIONAL_END: &[&str] = &[
    "body", "caption", "colgroup", "dd", "dt", "head", "html", "li", "optgroup", "option", "p",
    "rb", "rp", "rt", "rtc", "tbody", "td", "tfoot", "th", "thead", "tr",
];

/// Elements whose content is raw text, where `<` starts no tag.
const RAW_TEXT: &[&str] = &[
    "script", "style", "textarea", "title", "xmp", "iframe", "noembed", "noframes",
];

/// Checks that HTML markup nests elements at most `limit` deep, scanning tags without building a tree: void
/// elements, elements with optional end tags, comments, doctypes and raw-text content are skipped; `<x/>` closes
/// itself only inside `<svg>` or `<math>` (as HTML parsers treat it).
pub fn html(source: &str, limit: usize) -> Result<(), TooDeep> {
    let b = source.as_bytes();
    let mut depth = Depth::new(limit);
    let mut foreign = 0usize;
    let mut i = 0;
    while let Some(lt) = memchr(b'<', &b[i..]) {
        i += lt;
        if b[i..].starts_with(b"<!--") {
            i = find(b, i + 4, b"-->").map_or(b.len(), |end| end + 3);
            continue;
        }
        let Some(tag) = Tag::parse(b, i) else {
            i += 1;
            continue;
        };
        i = tag.end;
        let name = tag.name.as_str();
        if tag.closing {
            if name == "svg" || name == "math" {
                foreign = foreign.saturating_sub(1);
            }
            if counted(name) {
                depth.close();
            }
            continue;
        }
        if foreign == 0 && RAW_TEXT.contains(&name) {
            i = find_closing(b, i, name).unwrap_or(b.len());
            continue;
        }
        if tag.self_closing && (foreign > 0 || VOID.contains(&name)) {
            continue;
        }
        if name == "svg" || name == "math" {
            foreign += 1;
        }
        if counted(name) {
            depth.open()?;
        }
    }
    Ok(())
}

fn counted(name: &str) -> bool {
    !VOID.contains(&name) && !OPTIONAL_END.contains(&name)
}

/// A start or end tag found at a `<`.
struct Tag {
    name: String,
    closing: bool,
    self_closing: bool,
    /// Index just past the tag's `>`.
    end: usize,
}

impl Tag {
    /// The tag starting at `b[at] == b'<'`, or `None` when the `<` starts no tag (`< 3`, `<!DOCTYPE`, `<?xml`;
    /// the latter two are skipped by the caller one byte at a time, which is harmless: they nest nothing).
    fn parse(b: &[u8], at: usize) -> Option<Tag> {
        let mut j = at + 1;
        let closing = b.get(j) == Some(&b'/');
        if closing {
            j += 1;
        }
        let start = j;
        while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'-' || b[j] == b':') {
            j += 1;
        }
        if j == start || !b[start].is_ascii_alphabetic() {
            return None;
        }
        let name = String::from_utf8_lossy(&b[start..j]).to_ascii_lowercase();
        let mut quote = None;
        while j < b.len() {
            match (quote, b[j]) {
                (Some(q), c) if c == q => quote = None,
                (Some(_), _) => {}
                (None, c @ (b'"' | b'\'')) => quote = Some(c),
                (None, b'>') => break,
                _ => {}
            }
            j += 1;
        }
        let self_closing = j > start && j < b.len() && b[j - 1] == b'/';
        Some(Tag {
            name,
            closing,
            self_closing,
            end: (j + 1).min(b.len()),
        })
    }
}

/// Index of the `</name` that ends raw-text content started before `from` (case-insensitive).
fn find_closing(b: &[u8], from: usize, name: &str) -> Option<usize> {
    let mut i = from;
    while let Some(lt) = memchr(b'<', &b[i..]) {
        i += lt;
        let rest = &b[i..];
        if rest.len() > name.len() + 1
            && rest[1] == b'/'
            && rest[2..2 + name.len()].eq_ignore_ascii_case(name.as_bytes())
        {
            return Some(i);
        }
        i += 1;
    }
    None
}

fn memchr(needle: u8, hay: &[u8]) -> Option<usize> {
    hay.iter().position(|&c| c == needle)
}

/// Index of the first `needle` in `hay` at or after `from`.
fn find(hay: &[u8], from: usize, needle: &[u8]) -> Option<usize> {
    if from >= hay.len() {
        return None;
    }
    hay[from..]
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| p + from)
}

// ---------------------------------------------------------------------------------------------
// Markdown

/// Checks that Markdown nests block containers (block quotes, list items) at most `limit` deep. Per line, the
/// container markers at its start (`> > - 1. ...`) are counted, plus, on a line that starts a container, one
/// level per two columns of indentation (how nested lists are written).
pub fn markdown(text: &str, limit: usize) -> Result<(), TooDeep> {
    for line in text.lines() {
        let indent: usize = line
            .bytes()
            .take_while(|c| *c == b' ' || *c == b'\t')
            .map(|c| if c == b'\t' { 4 } else { 1 })
            .sum();
        let mut rest = line.trim_start_matches([' ', '\t']);
        let mut markers = 0usize;
        while let Some(after) = container_marker(rest) {
            markers += 1;
            rest = after.trim_start_matches([' ', '\t']);
            if markers > limit {
                break;
            }
        }
        if markers > 0 && markers + indent / 2 > limit {
            return Err(TooDeep { limit });
        }
    }
    Ok(())
}

/// The rest of `s` after a block-quote marker (`>`) or a list-item marker (`-`, `*`, `+`, `1.`, `1)` followed by
/// a space or the line's end), or `None` when `s` starts with neither.
fn container_marker(s: &str) -> Option<&str> {
    if let Some(rest) = s.strip_prefix('>') {
        return Some(rest);
    }
    let b = s.as_bytes();
    let marker_len = match b.first()? {
        b'-' | b'*' | b'+' => 1,
        c if c.is_ascii_digit() => {
            let digits = b.iter().take(10).take_while(|c| c.is_ascii_digit()).count();
            match b.get(digits) {
                Some(b'.' | b')') => digits + 1,
                _ => return None,
            }
        }
        _ => return None,
    };
    match b.get(marker_len) {
        None => Some(""),
        Some(b' ' | b'\t') => Some(&s[marker_len..]),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// PDF

/// Most decompressed bytes of a PDF's streams the scan reads (past it, the rest of a stream goes unscanned and
/// the extraction thread's large stack is the only guard).
const PDF_INFLATE_BUDGET: u64 = 256 << 20;

/// Checks that a PDF nests arrays and dictionaries at most `limit` deep: in the file's objects, and in its
/// Flate-compressed object and content streams (decompressed as they are read; images, fonts and other binary
/// streams are skipped). Strings, comments and inline images are skipped.
pub fn pdf(bytes: &[u8], limit: usize) -> Result<(), TooDeep> {
    let mut outer = PdfScan::new(limit);
    let mut budget = PDF_INFLATE_BUDGET;
    let mut i = 0;
    while i < bytes.len() {
        let Some(stream_at) = outer.feed_until_stream(bytes, i)? else {
            return Ok(());
        };
        let mut data = stream_at + b"stream".len();
        if bytes.get(data) == Some(&b'\r') {
            data += 1;
        }
        if bytes.get(data) == Some(&b'\n') {
            data += 1;
        }
        let end = find(bytes, data, b"endstream").unwrap_or(bytes.len());
        if scans_stream(stream_dictionary(bytes, stream_at)) {
            scan_flate(&bytes[data..end], limit, &mut budget)?;
        }
        i = end + b"endstream".len();
    }
    Ok(())
}

/// The bytes between the object header (`N G obj`) before a stream and its `stream` keyword: its dictionary.
fn stream_dictionary(bytes: &[u8], stream_at: usize) -> &[u8] {
    let from = stream_at.saturating_sub(8192);
    let window = &bytes[from..stream_at];
    let start = window
        .windows(3)
        .rposition(|w| w == b"obj")
        .map_or(0, |p| p + 3);
    &window[start..]
}

/// Whether a stream with this dictionary holds PDF syntax (object streams, page contents, forms), as opposed to
/// binary data (images, fonts, cross-reference streams, ICC profiles, metadata).
fn scans_stream(dict: &[u8]) -> bool {
    let has = |key: &[u8]| dict.windows(key.len()).any(|w| w == key);
    if has(b"/ObjStm") || has(b"/Form") {
        return true;
    }
    ![
        &b"/Subtype"[..],
        b"/XRef",
        b"/Length1",
        b"/Length2",
        b"/Width",
        b"/Metadata",
        b"/N ",
    ]
    .iter()
    .any(|k| has(k))
}

/// Inflates a zlib stream (anything else is left alone) and scans its syntax, within `budget` bytes.
fn scan_flate(data: &[u8], limit: usize, budget: &mut u64) -> Result<(), TooDeep> {
    if data.len() < 2 || data[0] & 0x0f != 8 {
        return Ok(());
    }
    let mut decoder = flate2::read::ZlibDecoder::new(data).take(*budget);
    let mut scan = PdfScan::new(limit);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match decoder.read(&mut buf) {
            Ok(0) | Err(_) => return Ok(()),
            Ok(n) => {
                *budget = budget.saturating_sub(n as u64);
                scan.feed_content(&buf[..n])?;
            }
        }
    }
}

/// The lexical state of a PDF syntax scan, kept across chunks.
#[derive(Debug)]
struct PdfScan {
    depth: Depth,
    /// Nesting of `(` in a literal string (0: outside).
    paren: usize,
    escaped: bool,
    comment: bool,
    hex: bool,
    /// The previous byte, for `<<`/`>>` and keyword boundaries.
    prev: u8,
    /// Inside an inline image's data (`ID` ... `EI`), in content streams.
    inline_image: bool,
    /// The last bytes seen, for spotting `ID`/`EI` across chunk boundaries.
    tail: [u8; 4],
}

impl PdfScan {
    fn new(limit: usize) -> Self {
        Self {
            depth: Depth::new(limit),
            paren: 0,
            escaped: false,
            comment: false,
            hex: false,
            prev: b' ',
            inline_image: false,
            tail: [b' '; 4],
        }
    }

    /// Scans the file from `from` until a `stream` keyword outside strings and comments; returns its index, or
    /// `None` at the end of the file.
    fn feed_until_stream(&mut self, bytes: &[u8], from: usize) -> Result<Option<usize>, TooDeep> {
        for (at, &c) in bytes.iter().enumerate().skip(from) {
            let plain = self.paren == 0 && !self.comment && !self.hex;
            if plain && c == b's' && bytes[at..].starts_with(b"stream") && is_delimiter(self.prev) {
                self.prev = b' ';
                return Ok(Some(at));
            }
            self.step(c)?;
        }
        Ok(None)
    }

    /// Scans a chunk of a content or object stream, skipping inline images.
    fn feed_content(&mut self, chunk: &[u8]) -> Result<(), TooDeep> {
        for &c in chunk {
            self.tail = [self.tail[1], self.tail[2], self.tail[3], c];
            let keyword = |k: &[u8]| {
                is_whitespace(self.tail[0]) && &self.tail[1..3] == k && is_whitespace(self.tail[3])
            };
            if self.inline_image {
                // `EI` between whitespace ends the data.
                self.inline_image = !keyword(b"EI");
                continue;
            }
            let plain = self.paren == 0 && !self.comment && !self.hex;
            if plain && keyword(b"ID") {
                self.inline_image = true;
                continue;
            }
            self.step(c)?;
        }
        Ok(())
    }

    /// One byte of PDF syntax.
    fn step(&mut self, c: u8) -> Result<(), TooDeep> {
        let prev = std::mem::replace(&mut self.prev, c);
        if self.comment {
            self.comment = c != b'\n' && c != b'\r';
            return Ok(());
        }
        if self.paren > 0 {
            match (self.escaped, c) {
                (true, _) => self.escaped = false,
                (false, b'\\') => self.escaped = true,
                (false, b'(') => self.paren += 1,
                (false, b')') => self.paren -= 1,
                _ => {}
            }
            return Ok(());
        }
        if self.hex {
            if c == b'<' && prev == b'<' {
                // `<<` after all: a dictionary.
                self.hex = false;
                self.prev = b' ';
                return self.depth.open();
            }
            if c == b'>' {
                self.hex = false;
                self.prev = b' ';
            }
            return Ok(());
        }
        match c {
            b'%' => self.comment = true,
            b'(' => self.paren = 1,
            b'[' => self.depth.open()?,
            b']' => self.depth.close(),
            b'<' => self.hex = true,
            b'>' if prev == b'>' => {
                self.depth.close();
                self.prev = b' ';
            }
            _ => {}
        }
        Ok(())
    }
}

fn is_whitespace(c: u8) -> bool {
    matches!(c, b' ' | b'\n' | b'\r' | b'\t' | b'\x0c' | b'\0')
}

fn is_delimiter(c: u8) -> bool {
    is_whitespace(c) || matches!(c, b'>' | b']' | b')' | b'}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_depth_ignores_strings() {
        assert!(json(br#"{"a": [1, {"b": "[[[[[["}]}"#, 3).is_ok());
        assert_eq!(json(br#"[[[[1]]]]"#, 3), Err(TooDeep { limit: 3 }));
        assert!(json(br#"["\"[[[[", 1]"#, 1).is_ok());
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(json(deep.as_bytes(), 128).is_err());
        assert!(
            json(b"[]]]]]][[[", 3).is_ok(),
            "stray closers do not go negative"
        );
    }

    #[test]
    fn html_depth_counts_nesting_elements_only() {
        let deep = "<div>".repeat(200);
        assert_eq!(html(&deep, 128), Err(TooDeep { limit: 128 }));
        let flat = "<div>x</div>".repeat(10_000);
        assert!(html(&flat, 4).is_ok());
        let sloppy = "<ul>".to_string() + &"<li>item<p>para<br><img src=x>".repeat(5_000);
        assert!(
            html(&sloppy, 4).is_ok(),
            "optional end tags and void elements do not nest"
        );
        let self_closed = "<div/>".repeat(200);
        assert!(
            html(&self_closed, 128).is_err(),
            "`<div/>` opens a div in HTML"
        );
        let svg = format!("<svg>{}</svg>", "<path d='M0 0'/>".repeat(1000));
        assert!(html(&svg, 4).is_ok(), "self-closing works inside svg");
        let script = format!("<script>{}</script><p>x", "<div>".repeat(1000));
        assert!(html(&script, 4).is_ok(), "script content is raw text");
        let comment = format!("<!--{}--><b>x</b>", "<div>".repeat(1000));
        assert!(html(&comment, 4).is_ok());
        assert!(html("<a title='>'><b>x</b></a>", 2).is_ok(), "quoted `>`");
        assert!(html("a < b and 3<4", 1).is_ok());
    }

    #[test]
    fn markdown_depth_counts_quotes_and_lists() {
        assert!(markdown("# Title\n\n> quote\n> > nested\n\n- a\n  - b\n    - c\n", 8).is_ok());
        let quotes = format!("{} deep", ">".repeat(1000));
        assert!(markdown(&quotes, 128).is_err());
        let list: String = (0..300)
            .map(|i| format!("{}- item\n", "  ".repeat(i)))
            .collect();
        assert!(markdown(&list, 128).is_err());
        let code = format!("{}let x = 1;\n", " ".repeat(400));
        assert!(
            markdown(&code, 128).is_ok(),
            "indented code is not a container"
        );
        assert!(markdown("-not a list\n1999 was a year\n", 1).is_ok());
    }

    fn deep_pdf(depth: usize) -> Vec<u8> {
        let mut pdf = b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog /X ".to_vec();
        pdf.extend(std::iter::repeat_n(b'[', depth));
        pdf.extend(std::iter::repeat_n(b']', depth));
        pdf.extend_from_slice(b" >>\nendobj\n%%EOF\n");
        pdf
    }

    #[test]
    fn pdf_depth_counts_arrays_and_dictionaries() {
        assert!(pdf(&deep_pdf(10), 128).is_ok());
        assert!(pdf(&deep_pdf(1000), 128).is_err());
        let strings = b"%PDF-1.4\n1 0 obj\n<< /T ([[[[(\\)[[[[) /H <5b5b5b> >>\nendobj\n% [[[[[[\n";
        assert!(
            pdf(strings, 2).is_ok(),
            "strings, hex strings and comments do not nest"
        );
        let dicts = format!(
            "%PDF-1.4\n1 0 obj\n{}{}\nendobj\n",
            "<< /A ".repeat(50),
            ">>".repeat(50)
        );
        assert!(pdf(dicts.as_bytes(), 49).is_err());
        assert!(pdf(dicts.as_bytes(), 50).is_ok());
        let binary = b"%PDF-1.4\n1 0 obj\n<< /Length 8 >>\nstream\n[[[[[[[[\nendstream\nendobj\n";
        assert!(pdf(binary, 2).is_ok(), "raw stream data is not PDF syntax");
    }

    #[test]
    fn pdf_depth_looks_inside_flate_content_streams() {
        use std::io::Write;
        let content = format!("BT {}{} TJ ET", "[".repeat(500), "]".repeat(500));
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(content.as_bytes()).unwrap();
        let data = z.finish().unwrap();
        let mut file = format!(
            "%PDF-1.4\n4 0 obj\n<< /Length {} /Filter /FlateDecode >>\nstream\n",
            data.len()
        )
        .into_bytes();
        file.extend_from_slice(&data);
        file.extend_from_slice(b"\nendstream\nendobj\n");
        assert!(pdf(&file, 128).is_err());
        let mut image_file = format!(
            "%PDF-1.4\n4 0 obj\n<< /Subtype /Image /Length {} /Filter /FlateDecode >>\nstream\n",
            data.len()
        )
        .into_bytes();
        image_file.extend_from_slice(&data);
        image_file.extend_from_slice(b"\nendstream\nendobj\n");
        assert!(pdf(&image_file, 128).is_ok(), "image data is not scanned");
    }
}
