//! Sentence- and paragraph-aware text chunking.
//!
//! [`chunk_text`] splits a document's text into passages ([`Chunk`]s) of at most
//! [`ChunkConfig::max_chars`] characters. Passages are byte spans into the source text, so
//! `&text[chunk.start..chunk.end]` is always the passage and offsets stay stable for citations.

use serde::{Deserialize, Serialize};

/// Chunking settings: how long a passage may be and how much consecutive passages overlap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkConfig {
    /// Maximum passage length in characters (Unicode scalar values, not bytes); at least 50.
    pub max_chars: usize,
    /// Budget, in characters, for the trailing whole sentences of one passage that are repeated
    /// at the start of the next; must be less than half of `max_chars`.
    pub overlap_chars: usize,
}

impl Default for ChunkConfig {
    fn default() -> Self {
        Self {
            max_chars: 2000,
            overlap_chars: 200,
        }
    }
}

impl ChunkConfig {
    /// Smallest accepted value of [`ChunkConfig::max_chars`].
    pub const MIN_MAX_CHARS: usize = 50;

    /// Checks the settings; the error message names the offending `chunking.*` key.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_chars < Self::MIN_MAX_CHARS {
            return Err(format!(
                "chunking.max_chars must be at least {} (got {})",
                Self::MIN_MAX_CHARS,
                self.max_chars
            ));
        }
        let half = self.max_chars / 2;
        if self.overlap_chars >= half {
            return Err(format!(
                "chunking.overlap_chars must be less than half of chunking.max_chars (got {} >= {})",
                self.overlap_chars, half
            ));
        }
        Ok(())
    }
}

/// A passage span: byte offsets into the source text; `&text[start..end]` is the passage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunk {
    /// Byte offset of the passage's first character (on a char boundary).
    pub start: usize,
    /// Byte offset just past the passage's last character (on a char boundary).
    pub end: usize,
}

/// Splits `text` into trimmed, non-empty passages of at most `cfg.max_chars` characters.
///
/// * Whitespace-only text yields no chunks; text whose trimmed form fits in `max_chars` yields
///   exactly one chunk covering it.
/// * Otherwise the text is split into paragraphs (separated by blank lines) and sentences
///   (ending in `.`, `!` or `?`, optionally followed by closing quotes or brackets, then
///   whitespace; common abbreviations, initials and decimals do not end a sentence). Sentences
///   are packed greedily; a chunk preferably ends at a paragraph boundary once it is at least
///   half full. A sentence longer than `max_chars` is split at whitespace, or at a char boundary
///   if it has none.
/// * Each chunk after the first starts with the last whole sentences of the previous chunk
///   whose total length is at most `overlap_chars` (possibly none), as long as the new chunk
///   still advances past the previous one.
///
/// Chunks are returned in order of start offset and together cover every non-whitespace
/// character. The result is deterministic.
pub fn chunk_text(text: &str, cfg: &ChunkConfig) -> Vec<Chunk> {
    let max = cfg.max_chars.max(1);
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Vec::new();
    }
    if trimmed.chars().count() <= max {
        let start = text.len() - text.trim_start().len();
        return vec![Chunk {
            start,
            end: start + trimmed.len(),
        }];
    }

    let units = split_units(text, max);
    pack_units(&units, max, cfg.overlap_chars)
}

/// An indivisible piece of text to pack: a sentence, or a piece of an over-long sentence.
#[derive(Debug, Clone, Copy)]
struct Unit {
    /// Byte span in the source text (trimmed, non-empty).
    start: usize,
    end: usize,
    /// Char index of `start` / `end` in the source text, for O(1) length computations.
    cstart: usize,
    cend: usize,
    /// Whether this unit is a whole sentence (only whole sentences are repeated as overlap).
    whole: bool,
    /// Whether this unit is the last one of its paragraph.
    para_end: bool,
}

/// Splits the text into paragraphs, sentences and, for over-long sentences, pieces.
fn split_units(text: &str, max: usize) -> Vec<Unit> {
    let mut units = Vec::new();
    for (ps, pe) in paragraphs(text) {
        let first = units.len();
        for (ss, se) in sentences(text, ps, pe) {
            if text[ss..se].chars().count() <= max {
                units.push(unit(ss, se, true));
            } else {
                for (a, b) in split_long(text, ss, se, max) {
                    units.push(unit(a, b, false));
                }
            }
        }
        if units.len() > first {
            if let Some(last) = units.last_mut() {
                last.para_end = true;
            }
        }
    }
    assign_char_offsets(text, &mut units);
    units
}

fn unit(start: usize, end: usize, whole: bool) -> Unit {
    Unit {
        start,
        end,
        cstart: 0,
        cend: 0,
        whole,
        para_end: false,
    }
}

/// Fills in `cstart`/`cend` with one pass over the text (unit offsets are ascending).
fn assign_char_offsets(text: &str, units: &mut [Unit]) {
    let mut chars = 0usize;
    let mut byte = 0usize;
    let mut iter = text.chars();
    let mut advance_to = |target: usize| -> usize {
        while byte < target {
            match iter.next() {
                Some(c) => {
                    byte += c.len_utf8();
                    chars += 1;
                }
                None => break,
            }
        }
        chars
    };
    for u in units.iter_mut() {
        u.cstart = advance_to(u.start);
        u.cend = advance_to(u.end);
    }
}

/// Byte spans (trimmed, non-empty) of the blank-line-separated paragraphs of `text`.
fn paragraphs(text: &str) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut current: Option<(usize, usize)> = None;
    let mut offset = 0usize;
    for line in text.split_inclusive('\n') {
        let line_start = offset;
        offset += line.len();
        let content = line.trim();
        if content.is_empty() {
            if let Some(p) = current.take() {
                out.push(p);
            }
            continue;
        }
        let lead = line.len() - line.trim_start().len();
        let end = line_start + lead + content.len();
        current = match current {
            Some((s, _)) => Some((s, end)),
            None => Some((line_start + lead, end)),
        };
    }
    if let Some(p) = current {
        out.push(p);
    }
    out
}

/// Words that end in a period without ending a sentence (lowercase, without the final period).
const ABBREVIATIONS: &[&str] = &[
    "mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "mt", "ft", "vs", "e.g", "i.e", "cf", "al",
    "fig", "figs", "approx", "dept", "capt", "lt", "col", "gen", "gov", "rev", "hon", "sgt", "ave",
    "blvd", "eq", "vol", "pp",
];

fn is_terminator(c: char) -> bool {
    matches!(c, '.' | '!' | '?')
}

fn is_closer(c: char) -> bool {
    matches!(
        c,
        '"' | '\'' | ')' | ']' | '}' | '\u{201D}' | '\u{2019}' | '\u{00BB}' | '\u{203A}'
    )
}

fn is_opener(c: char) -> bool {
    matches!(
        c,
        '"' | '\'' | '(' | '[' | '{' | '\u{201C}' | '\u{2018}' | '\u{00AB}' | '\u{2039}'
    )
}

/// Whether the word ending just before the period at byte `dot` of `para` is an abbreviation
/// or an initial, so that the period does not end the sentence.
fn is_abbreviation(para: &str, dot: usize) -> bool {
    let before = &para[..dot];
    let word_start = before
        .char_indices()
        .rev()
        .find(|&(_, c)| c.is_whitespace())
        .map_or(0, |(i, c)| i + c.len_utf8());
    let word = before[word_start..].trim_start_matches(is_opener);
    if word.is_empty() {
        return false;
    }
    let mut chars = word.chars();
    if let (Some(c), None) = (chars.next(), chars.next()) {
        // A single capital letter: an initial such as "J." in "J. Smith".
        if c.is_uppercase() {
            return true;
        }
    }
    let lower = word.to_lowercase();
    ABBREVIATIONS.contains(&lower.as_str())
}

/// Byte spans (trimmed, non-empty) of the sentences in the paragraph `text[ps..pe]`.
fn sentences(text: &str, ps: usize, pe: usize) -> Vec<(usize, usize)> {
    let para = &text[ps..pe];
    let chars: Vec<(usize, char)> = para.char_indices().collect();
    let mut out = Vec::new();
    let mut sent_start = 0usize;
    let mut i = 0usize;
    while i < chars.len() {
        let (pos, c) = chars[i];
        if !is_terminator(c) {
            i += 1;
            continue;
        }
        let mut j = i + 1;
        while j < chars.len() && is_terminator(chars[j].1) {
            j += 1;
        }
        let single_period = c == '.' && j == i + 1;
        while j < chars.len() && is_closer(chars[j].1) {
            j += 1;
        }
        if j >= chars.len() {
            break; // the paragraph's end closes the last sentence anyway
        }
        if !chars[j].1.is_whitespace() || (single_period && is_abbreviation(para, pos)) {
            i = j;
            continue;
        }
        let end = chars[j].0;
        out.push((ps + sent_start, ps + end));
        // The next sentence starts at the next non-whitespace character.
        let mut k = j;
        while k < chars.len() && chars[k].1.is_whitespace() {
            k += 1;
        }
        if k >= chars.len() {
            return out;
        }
        sent_start = chars[k].0;
        i = k;
    }
    out.push((ps + sent_start, pe));
    out
}

/// Splits the over-long sentence `text[start..end]` into trimmed pieces of at most `max` chars,
/// at whitespace where possible and at a char boundary otherwise.
fn split_long(text: &str, start: usize, end: usize, max: usize) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut s = start;
    while s < end {
        let rest = &text[s..end];
        // Byte offsets (relative to `s`) of the first `max + 1` chars.
        let window: Vec<(usize, char)> = rest.char_indices().take(max + 1).collect();
        if window.len() <= max {
            out.push((s, end));
            break;
        }
        // The last whitespace among chars 1..=max ends the piece just before it.
        let cut = window[1..]
            .iter()
            .rev()
            .find(|&&(_, c)| c.is_whitespace())
            .map(|&(i, _)| i);
        let (piece_end, next) = match cut {
            Some(ws) => {
                let piece = rest[..ws].trim_end();
                let after = rest[ws..].trim_start();
                (s + piece.len(), end - after.len())
            }
            None => {
                let hard = window[max].0;
                (s + hard, s + hard)
            }
        };
        out.push((s, piece_end));
        s = next;
    }
    out
}

/// Greedily packs units into chunks, preferring paragraph ends and adding sentence overlap.
fn pack_units(units: &[Unit], max: usize, overlap: usize) -> Vec<Chunk> {
    let n = units.len();
    let len = |a: usize, b: usize| units[b].cend - units[a].cstart;
    let mut chunks = Vec::new();
    let mut s = 0usize;
    // Index of the last unit of the previous chunk, if any.
    let mut prev_end: Option<usize> = None;
    while s < n {
        let min_end = prev_end.map_or(s, |p| p + 1);
        let mut e = s;
        while e + 1 < n && len(s, e + 1) <= max {
            e += 1;
        }
        debug_assert!(e >= min_end);
        if e + 1 < n && !units[e].para_end {
            if let Some(p) = (min_end..e)
                .rev()
                .find(|&k| units[k].para_end && 2 * len(s, k) >= max)
            {
                e = p;
            }
        }
        chunks.push(Chunk {
            start: units[s].start,
            end: units[e].end,
        });
        if e + 1 >= n {
            break;
        }
        // Overlap: the last whole sentences of this chunk within the overlap budget.
        let mut k = e + 1;
        while k > s + 1 && units[k - 1].whole && len(k - 1, e) <= overlap {
            k -= 1;
        }
        // Make sure the next chunk can still take in the next new unit.
        while k <= e && len(k, e + 1) > max {
            k += 1;
        }
        prev_end = Some(e);
        s = k;
    }
    chunks
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(max_chars: usize, overlap_chars: usize) -> ChunkConfig {
        ChunkConfig {
            max_chars,
            overlap_chars,
        }
    }

    fn texts<'a>(text: &'a str, chunks: &[Chunk]) -> Vec<&'a str> {
        chunks.iter().map(|c| &text[c.start..c.end]).collect()
    }

    /// Checks every documented invariant of `chunk_text`'s output.
    fn check_invariants(text: &str, c: &ChunkConfig, chunks: &[Chunk]) {
        if text.trim().is_empty() {
            assert!(
                chunks.is_empty(),
                "whitespace-only text must give no chunks"
            );
            return;
        }
        assert!(
            !chunks.is_empty(),
            "non-empty text must give chunks: {text:?}"
        );
        let mut covered = vec![false; text.len()];
        let mut prev: Option<Chunk> = None;
        for ch in chunks {
            assert!(ch.start < ch.end, "empty chunk {ch:?}");
            assert!(text.is_char_boundary(ch.start) && text.is_char_boundary(ch.end));
            let s = &text[ch.start..ch.end];
            assert_eq!(s, s.trim(), "chunk not trimmed: {s:?}");
            assert!(
                s.chars().count() <= c.max_chars,
                "chunk of {} chars > {}: {s:?}",
                s.chars().count(),
                c.max_chars
            );
            if let Some(p) = prev {
                assert!(p.start < ch.start, "chunks out of order: {p:?} then {ch:?}");
                assert!(p.end < ch.end, "no progress: {p:?} then {ch:?}");
            }
            prev = Some(*ch);
            covered[ch.start..ch.end].iter_mut().for_each(|b| *b = true);
        }
        for (i, ch) in text.char_indices() {
            if !ch.is_whitespace() {
                assert!(
                    covered[i],
                    "char {ch:?} at byte {i} not covered in {text:?}"
                );
            }
        }
    }

    #[test]
    fn default_config_is_valid() {
        let d = ChunkConfig::default();
        assert_eq!(d, cfg(2000, 200));
        assert_eq!(d.validate(), Ok(()));
    }

    #[test]
    fn validate_names_the_key() {
        let err = cfg(49, 0).validate().unwrap_err();
        assert!(err.contains("chunking.max_chars"), "{err}");
        let err = cfg(1000, 600).validate().unwrap_err();
        assert_eq!(
            err,
            "chunking.overlap_chars must be less than half of chunking.max_chars (got 600 >= 500)"
        );
        assert!(cfg(1000, 499).validate().is_ok());
        assert!(cfg(50, 24).validate().is_ok());
        assert!(cfg(50, 25).validate().is_err());
    }

    #[test]
    fn short_text_is_a_single_trimmed_chunk() {
        let text = "  \n Hello world. This is short.\n\n Second paragraph.  \n";
        let chunks = chunk_text(text, &cfg(200, 20));
        assert_eq!(chunks.len(), 1);
        assert_eq!(
            &text[chunks[0].start..chunks[0].end],
            "Hello world. This is short.\n\n Second paragraph."
        );
    }

    #[test]
    fn whitespace_only_gives_no_chunks() {
        assert!(chunk_text("", &ChunkConfig::default()).is_empty());
        assert!(chunk_text(" \n\t\r\n  \u{a0}", &ChunkConfig::default()).is_empty());
    }

    #[test]
    fn paragraph_boundary_is_respected() {
        // Two paragraphs of ~70 chars each; max 100 → the first chunk ends with paragraph one
        // even though a sentence of paragraph two would still fit.
        let p1 = "The keeper climbed the stairs. He lit the lamp. The sea was calm tonight.";
        let p2 = "Ships passed. The fog rolled in from the west. Gulls slept on the rocks.";
        let text = format!("{p1}\n\n{p2}");
        let chunks = chunk_text(&text, &cfg(100, 0));
        assert_eq!(texts(&text, &chunks), vec![p1, p2]);
        check_invariants(&text, &cfg(100, 0), &chunks);
    }

    #[test]
    fn sentence_boundaries_are_respected() {
        let sentences: Vec<String> = (0..40)
            .map(|i| format!("Sentence number {i} is short and sweet."))
            .collect();
        let text = sentences.join(" ");
        let c = cfg(150, 0);
        let chunks = chunk_text(&text, &c);
        assert!(chunks.len() > 5);
        for t in texts(&text, &chunks) {
            assert!(t.starts_with("Sentence number"), "{t:?}");
            assert!(t.ends_with("sweet."), "{t:?}");
        }
        // No overlap → chunks partition the sentences.
        let joined: Vec<&str> = texts(&text, &chunks);
        assert_eq!(joined.join(" "), text);
        check_invariants(&text, &c, &chunks);
    }

    #[test]
    fn abbreviations_do_not_split_sentences() {
        let s1 = "Mr. Smith met Dr. Jones on St. Mary's Road, e.g. near the mill, i.e. at noon.";
        let s2 = "J. R. Tolkien paid 3.5 pounds for the map at noon sharp!";
        let s3 = "Was it worth it? \"Yes.\" (He said so.) Then they left.";
        let text = format!("{s1} {s2} {s3}");
        let starts: Vec<&str> = sentences(&text, 0, text.len())
            .into_iter()
            .map(|(a, b)| &text[a..b])
            .collect();
        assert_eq!(
            starts,
            vec![
                s1,
                s2,
                "Was it worth it?",
                "\"Yes.\"",
                "(He said so.)",
                "Then they left."
            ]
        );
        // And chunking with a small max never cuts inside s1.
        let c = cfg(90, 0);
        let chunks = chunk_text(&text, &c);
        assert_eq!(texts(&text, &chunks)[0], s1);
        check_invariants(&text, &c, &chunks);
    }

    #[test]
    fn overlap_repeats_the_previous_chunks_last_sentence() {
        let sentences: Vec<String> = (0..30).map(|i| format!("Fact {i:02} is here.")).collect();
        let text = sentences.join(" ");
        let c = cfg(100, 30);
        let chunks = chunk_text(&text, &c);
        assert!(chunks.len() > 3);
        let ts = texts(&text, &chunks);
        for w in ts.windows(2) {
            let last_sentence = &w[0][w[0].rfind("Fact").unwrap()..];
            assert!(
                w[1].starts_with(last_sentence),
                "{:?} should start with {last_sentence:?}",
                w[1]
            );
            // Each sentence is 16 chars; two with the space is 33 > 30, so only one repeats.
            assert!(!w[1].starts_with(&w[0][w[0].len() - 33..]));
        }
        check_invariants(&text, &c, &chunks);
    }

    #[test]
    fn overlap_skipped_when_last_sentence_too_long() {
        let text = "Short one. ".repeat(3)
            + "This final sentence is deliberately far longer than the overlap budget allows. "
            + &"More text here. ".repeat(6);
        let c = cfg(120, 20);
        let chunks = chunk_text(&text, &c);
        let ts = texts(&text, &chunks);
        assert!(ts[0].ends_with("allows."), "{ts:?}");
        assert!(ts[1].starts_with("More text here."), "{ts:?}");
        check_invariants(&text, &c, &chunks);
    }

    #[test]
    fn long_word_is_hard_split() {
        let text = "x".repeat(523);
        let c = cfg(100, 20);
        let chunks = chunk_text(&text, &c);
        assert_eq!(chunks.len(), 6);
        for ch in &chunks {
            assert!(ch.end - ch.start <= 100);
        }
        check_invariants(&text, &c, &chunks);

        // A long sentence with spaces splits at whitespace, never inside a word.
        let words: Vec<String> = (0..200).map(|i| format!("word{i}")).collect();
        let text = words.join(" ") + ".";
        let chunks = chunk_text(&text, &c);
        for t in texts(&text, &chunks) {
            assert!(t.starts_with("word"), "{t:?}");
            let last = t.rsplit(' ').next().unwrap().trim_end_matches('.');
            assert!(
                words.iter().any(|w| w == last),
                "split inside a word: {t:?}"
            );
        }
        check_invariants(&text, &c, &chunks);
    }

    #[test]
    fn multibyte_text_has_valid_offsets() {
        let base = "Café déjà vu. 日本語のテキストです。 Émoji 🎉🚀 are fun! Ünïcödé everywhere? ";
        let text = base.repeat(20) + &"日本".repeat(80) + "\n\n" + &"🎉".repeat(130);
        for c in [cfg(50, 10), cfg(77, 30), cfg(200, 60)] {
            let chunks = chunk_text(&text, &c);
            assert!(chunks.len() > 1);
            check_invariants(&text, &c, &chunks);
        }
    }

    /// Tiny deterministic linear congruential generator (no extra dependencies).
    struct Lcg(u64);

    impl Lcg {
        fn next(&mut self) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            self.0 >> 33
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    fn random_text(rng: &mut Lcg) -> String {
        const WORDS: &[&str] = &[
            "the",
            "keeper",
            "lamp",
            "harbour",
            "Mr.",
            "Dr.",
            "e.g.",
            "J.",
            "3.5",
            "café",
            "日本",
            "🎉",
            "naïve",
            "ship",
            "fog",
            "(aside)",
            "\"quoted.\"",
            "end.",
            "why?",
            "wow!",
            "...",
            "x",
            "St.",
            "i.e.",
            "tide,",
        ];
        const SEPS: &[&str] = &[
            " ", " ", " ", " ", "  ", "\n", "\n\n", " \n \n", "\t", ". ", "! ",
        ];
        let mut s = String::new();
        if rng.below(4) == 0 {
            s.push_str(" \n");
        }
        let n = rng.below(400);
        for _ in 0..n {
            match rng.below(40) {
                0 => {
                    // A long run without whitespace.
                    let len = rng.below(300) + 1;
                    let ch = ['a', 'é', '日', '🎉'][rng.below(4)];
                    s.extend(std::iter::repeat_n(ch, len));
                }
                1 => s.push_str("   \n\n\n   "),
                _ => s.push_str(WORDS[rng.below(WORDS.len())]),
            }
            s.push_str(SEPS[rng.below(SEPS.len())]);
        }
        s
    }

    #[test]
    fn random_texts_satisfy_all_invariants() {
        let mut rng = Lcg(0x5eed_1234_abcd_ef01);
        for _ in 0..400 {
            let text = random_text(&mut rng);
            let max_chars = 50 + rng.below(250);
            let overlap_chars = rng.below(max_chars / 2);
            let c = cfg(max_chars, overlap_chars);
            assert!(c.validate().is_ok());
            let chunks = chunk_text(&text, &c);
            check_invariants(&text, &c, &chunks);
            assert_eq!(chunks, chunk_text(&text, &c), "not deterministic");
        }
    }

    #[test]
    fn tolerates_invalid_config_without_looping() {
        let text = "One. Two. Three. Four. Five. Six. Seven. Eight.".repeat(5);
        for c in [cfg(0, 0), cfg(1, 5), cfg(10, 100)] {
            let chunks = chunk_text(&text, &c);
            let c = cfg(c.max_chars.max(1), c.overlap_chars);
            check_invariants(&text, &c, &chunks);
        }
    }
}
