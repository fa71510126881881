//! A model-free open-IE extractor, for passages no precomputed or LLM extraction covers and for the entities of
//! questions ([`FallbackExtractor::entities_of`]).
//!
//! Entities, per sentence:
//! - capitalised names, joined across connectors ("University of Copenhagen", "Vasco da Gama", "Bank of the
//!   United States"), a possessive ("Jehovah's Witnesses"), `&`, short numbers ("Apollo 11") and ", Inc."-like
//!   suffixes; a name does not start with a function word ("The", "In", "He", "When", ...), except a mid-sentence
//!   "The" that opens a title; lone sentence-opening adverbs and participles ("Originally") and runs longer than
//!   seven tokens (flattened tables) are dropped;
//! - dates ("May 5, 1990", "5 May 1990", "January 1960"), years ("1998", "the 2012 Summer Olympics") and
//!   centuries ("19th century"); other numbers are not entities;
//! - quoted titles starting with a capital or a digit ("Let It Be").
//!
//! Relations: `(e_i, words between them, e_{i+1})` for consecutive entities of a sentence (`co-occurs with` when
//! only punctuation separates them, `related to` beyond six words), and `(title, "mentions", e)` for every entity of
//! the passage, its title being its subject.
//!
//! Against gpt-3.5-turbo's extraction of the MuSiQue corpus (`examples/openie_recall.rs`), it finds about 82% of
//! the gold (passage, entity) pairs with a precision of about 70%.

use std::collections::HashSet;

use super::{normalize_phrase, Extraction, Extractor, OpenIeError, PassageInput, Triple};

/// Lowercase words that may join capitalised words inside one name ("University of Copenhagen", "Vasco da Gama").
#[rustfmt::skip]
const CONNECTORS: &[&str] = &[
    "of", "de", "da", "del", "della", "di", "du", "des", "der", "van", "von", "la", "le", "y",
    "den", "do", "dos", "das", "al", "el", "bin", "ibn", "zu", "&",
];

/// Articles that may follow a connector inside a name ("Bank of the United States", "Anthony de la Roche").
const ARTICLES: &[&str] = &["the", "la", "le", "los", "las", "der", "den", "des", "du"];

/// Capitalised words that do not start a name: function words at the start of a sentence, pronouns and the like.
#[rustfmt::skip]
const STOP: &[&str] = &[
    "A", "An", "The", "In", "On", "At", "By", "For", "From", "With", "Of", "To", "Into", "Onto",
    "As", "And", "But", "Or", "Nor", "If", "Then", "He", "She", "It", "They", "We", "I", "You",
    "His", "Her", "Its", "Their", "Our", "My", "Your", "Him", "Them", "This", "That", "These",
    "Those", "There", "Here", "After", "Before", "When", "While", "Who", "Whom", "Whose", "What",
    "Which", "Where", "How", "Why", "Although", "Though", "During", "Since", "Following", "Upon",
    "Under", "Over", "Some", "Many", "Most", "All", "Both", "Each", "Every", "Other", "Another",
    "Such", "According", "Also", "However", "Today", "Currently", "Despite", "Between", "Among",
    "Unlike", "Like", "Later", "Thus", "Meanwhile", "Because", "Once", "Until", "Unless", "Whether",
    "Within", "Without", "Throughout", "Several", "Any", "No", "Not", "Only", "Even", "Yet",
    "So", "About", "Against", "Along", "Around", "Across", "Behind", "Beyond", "Near", "Per", "Via",
    "Is", "Was", "Are", "Were", "Be", "Been", "Has", "Have", "Had", "Do", "Does", "Did", "Can",
    "Could", "Will", "Would", "Should", "May", "Might", "Must", "Shall", "One", "Two", "Three",
    "Four", "Five", "Six", "Seven", "Eight", "Nine", "Ten", "Born", "Due", "Much", "More", "Prior",
    "Being", "Either", "Neither", "Instead", "Still", "Often", "Now", "Soon", "Together", "Overall",
    "Well", "Just", "Perhaps", "Besides", "Including", "Additionally", "Located", "Founded",
    "Established", "Released", "Situated", "Produced",
];

/// Mentions dropped on their own: company and era suffixes, units and the like.
#[rustfmt::skip]
const JUNK: &[&str] = &[
    "inc", "ltd", "co", "corp", "llc", "plc", "bc", "ad", "bce", "ce", "fm", "am", "pm", "no",
];

/// Month names, which start dates ("May 5, 1990", "January 1960").
#[rustfmt::skip]
const MONTHS: &[&str] = &[
    "January", "February", "March", "April", "May", "June", "July", "August", "September",
    "October", "November", "December",
];

/// Name suffixes after a comma ("Publix Super Markets, Inc.", "Peter Williams, Jr.").
#[rustfmt::skip]
const SUFFIXES: &[&str] = &[
    "Inc.", "Inc", "Jr.", "Jr", "Sr.", "Ltd.", "Ltd", "LLC", "L.L.C.", "Co.",
];

/// Words whose trailing period does not end a sentence.
#[rustfmt::skip]
const ABBREVIATIONS: &[&str] = &[
    "Mr", "Mrs", "Ms", "Dr", "St", "Jr", "Sr", "Inc", "Ltd", "Co", "Corp", "Mt", "Ft", "Gen", "Col",
    "Lt", "Sgt", "Capt", "Prof", "Rev", "Gov", "Sen", "Rep", "vs", "No", "Vol", "Bros", "Jan",
    "Feb", "Mar", "Apr", "Jun", "Jul", "Aug", "Sep", "Sept", "Oct", "Nov", "Dec", "etc", "approx",
    "ca", "c",
];

/// Relations longer than this many words become `related to`.
const MAX_RELATION_WORDS: usize = 6;

/// Longer capitalised runs are dropped: they are flattened tables and lists, not names.
const MAX_NAME_TOKENS: usize = 7;

/// Longest quoted title taken as one entity, in tokens.
const MAX_QUOTED_TOKENS: usize = 12;

/// The model-free extractor (see the module documentation).
#[derive(Debug, Clone, Default)]
pub struct FallbackExtractor {
    _private: (),
}

impl FallbackExtractor {
    /// The entities of a text (a passage body or a question), in order of appearance, without duplicates (by
    /// [`normalize_phrase`]).
    pub fn entities_of(&self, text: &str) -> Vec<String> {
        let mut seen = HashSet::new();
        sentences(text)
            .iter()
            .flat_map(|s| mentions(s))
            .map(|m| m.text)
            .filter(|e| seen.insert(normalize_phrase(e)))
            .collect()
    }

    /// The extraction of one passage: the title (without a trailing parenthetical) and the entities of the text;
    /// triples between consecutive entities of each sentence (see the module documentation), and
    /// `(title, "mentions", entity)` for every other entity, the passage being about its title.
    pub fn extract_passage(&self, passage: &PassageInput<'_>) -> Extraction {
        let title = strip_parenthetical(passage.title);
        let title_key = normalize_phrase(title);
        let mut seen = HashSet::new();
        let mut entities = Vec::new();
        if !title_key.is_empty() {
            seen.insert(title_key.clone());
            entities.push(title.to_string());
        }
        let mut triples = Vec::new();
        for sentence in &sentences(passage.text) {
            let found = mentions(sentence);
            for m in &found {
                if seen.insert(normalize_phrase(&m.text)) {
                    entities.push(m.text.clone());
                }
            }
            for pair in found.windows(2) {
                let (a, b) = (&pair[0], &pair[1]);
                if normalize_phrase(&a.text) != normalize_phrase(&b.text) {
                    triples.push(triple(
                        &a.text,
                        &relation(&sentence[a.end..b.start]),
                        &b.text,
                    ));
                }
            }
        }
        if !title_key.is_empty() {
            triples.extend(
                entities
                    .iter()
                    .skip(1)
                    .map(|e| triple(title, "mentions", e)),
            );
        }
        let mut unique = HashSet::new();
        triples.retain(|t| unique.insert(t.clone()));
        Extraction { entities, triples }
    }
}

impl Extractor for FallbackExtractor {
    fn name(&self) -> &str {
        "fallback"
    }

    fn question_entities(&self, question: &str) -> Result<Vec<String>, OpenIeError> {
        Ok(self.entities_of(question))
    }

    fn extract(&self, passages: &[PassageInput<'_>]) -> Result<Vec<Extraction>, OpenIeError> {
        Ok(passages.iter().map(|p| self.extract_passage(p)).collect())
    }
}

fn triple(subject: &str, relation: &str, object: &str) -> Triple {
    Triple {
        subject: subject.to_string(),
        relation: relation.to_string(),
        object: object.to_string(),
    }
}

/// "Green (band)" → "Green".
fn strip_parenthetical(title: &str) -> &str {
    let t = title.trim();
    match (t.ends_with(')'), t.rfind(" (")) {
        (true, Some(i)) if i > 0 => t[..i].trim_end(),
        _ => t,
    }
}

/// The relation between two mentions: the words between them, lowercased.
fn relation(between: &[Token<'_>]) -> String {
    let words: Vec<String> = between
        .iter()
        .filter(|t| t.kind != Kind::Punct)
        .map(|t| t.text.to_lowercase())
        .collect();
    match words.len() {
        0 => "co-occurs with".to_string(),
        n if n > MAX_RELATION_WORDS => "related to".to_string(),
        _ => words.join(" "),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Starts with a letter.
    Word,
    /// Starts with a digit ("1998", "3,000", "19th").
    Number,
    /// Anything else, one character (or a possessive `'s`).
    Punct,
}

#[derive(Debug, Clone, Copy)]
struct Token<'a> {
    text: &'a str,
    kind: Kind,
    /// A word whose final period was taken as an abbreviation mark ("U.S.", "J.", "St.").
    abbreviation: bool,
}

impl Token<'_> {
    fn capitalised(&self) -> bool {
        self.kind == Kind::Word && self.text.chars().next().is_some_and(char::is_uppercase)
    }

    fn is(&self, s: &str) -> bool {
        self.text == s
    }
}

/// Splits text into words, numbers and punctuation. Inner apostrophes, hyphens and periods stay inside words
/// ("O'Brien", "Saint-Jules", "U.S"), commas and periods inside numbers ("3,000", "1.355"); a possessive `'s` is a
/// token of its own; the period of an abbreviation or initial joins its word.
fn tokenize(text: &str) -> Vec<Token<'_>> {
    let mut tokens = Vec::new();
    let mut rest = text;
    let mut offset = 0;
    while let Some(c) = rest.chars().next() {
        let len = if c.is_whitespace() {
            c.len_utf8()
        } else if c.is_alphanumeric() {
            let len = word_len(rest);
            let word = &rest[..len];
            let abbreviation = rest[len..].starts_with('.') && is_abbreviation(word);
            let len = len + usize::from(abbreviation);
            let kind = if c.is_ascii_digit() {
                Kind::Number
            } else {
                Kind::Word
            };
            tokens.push(Token {
                text: &text[offset..offset + len],
                kind,
                abbreviation,
            });
            len
        } else {
            let possessive = is_apostrophe(c) && rest[c.len_utf8()..].starts_with('s') && {
                let after = &rest[c.len_utf8() + 1..];
                !after.chars().next().is_some_and(char::is_alphanumeric)
            };
            let len = c.len_utf8() + usize::from(possessive);
            tokens.push(Token {
                text: &text[offset..offset + len],
                kind: Kind::Punct,
                abbreviation: false,
            });
            len
        };
        offset += len;
        rest = &rest[len..];
    }
    tokens
}

fn is_apostrophe(c: char) -> bool {
    c == '\'' || c == '’'
}

/// Length in bytes of the word at the start of `s`.
fn word_len(s: &str) -> usize {
    let mut chars = s.char_indices().peekable();
    let mut end = 0;
    let mut prev = ' ';
    while let Some((i, c)) = chars.next() {
        let next = chars.peek().map(|&(_, n)| n);
        let joins = match c {
            _ if c.is_alphanumeric() => true,
            '-' | '.' => next.is_some_and(char::is_alphanumeric),
            ',' => prev.is_ascii_digit() && next.is_some_and(|n| n.is_ascii_digit()),
            '\'' | '’' => {
                // An apostrophe joins a word ("O'Brien") but not a possessive "'s" at a word's end.
                let possessive = next == Some('s')
                    && !s[i + c.len_utf8() + 1..].starts_with(char::is_alphanumeric);
                next.is_some_and(char::is_alphanumeric) && !possessive
            }
            _ => false,
        };
        if !joins || (i == 0 && !c.is_alphanumeric()) {
            break;
        }
        end = i + c.len_utf8();
        prev = c;
    }
    end
}

fn is_abbreviation(word: &str) -> bool {
    let mut chars = word.chars();
    let single_capital = chars.next().is_some_and(char::is_uppercase) && chars.next().is_none();
    let dotted = word.contains('.') && !word.starts_with(|c: char| c.is_ascii_digit());
    single_capital || dotted || ABBREVIATIONS.contains(&word.trim_end_matches('.'))
}

/// Sentences as token lists: a sentence ends at `.`, `!` or `?` followed by a capitalised word, a number or an
/// opening quote or parenthesis, or at an abbreviation followed by a sentence-opening word such as "The".
fn sentences(text: &str) -> Vec<Vec<Token<'_>>> {
    let tokens = tokenize(text);
    let mut out = Vec::new();
    let mut current = Vec::new();
    for (i, &t) in tokens.iter().enumerate() {
        current.push(t);
        let next = tokens.get(i + 1);
        let ends = match next {
            None => false,
            Some(n) if t.kind == Kind::Punct && matches!(t.text, "." | "!" | "?") => {
                n.capitalised()
                    || n.kind == Kind::Number
                    || matches!(n.text, "\"" | "“" | "(" | "'")
            }
            Some(n) => t.abbreviation && n.capitalised() && STOP.contains(&n.text) && n.text != "I",
        };
        if ends {
            out.push(std::mem::take(&mut current));
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// An entity found in a sentence: its surface text and token range.
#[derive(Debug, Clone)]
struct Mention {
    text: String,
    start: usize,
    end: usize,
}

/// The entity mentions of one sentence, in order.
fn mentions(tokens: &[Token<'_>]) -> Vec<Mention> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        let end = if let Some(end) = quoted(tokens, i) {
            push(&mut out, tokens, i + 1, end - 1);
            end
        } else if let Some(end) = date(tokens, i) {
            push(&mut out, tokens, i, end);
            end
        } else if let Some(end) = year_or_century(tokens, i) {
            // "the 2012 Summer Olympics" is one name; "a 1997 American film" is not.
            let the = i > 0 && tokens[i - 1].text.eq_ignore_ascii_case("the");
            let end = if the {
                name_end(tokens, end).unwrap_or(end)
            } else {
                end
            };
            push(&mut out, tokens, i, end);
            end
        } else if tokens[i].is("The") && i > 0 && name_end(tokens, i + 1).is_some() {
            // Mid-sentence, a capitalised "The" belongs to a title ("the novel The Sensory Order").
            let end = name_end(tokens, i + 1).unwrap_or(i + 1);
            push(&mut out, tokens, i, end);
            end
        } else if tokens[i].capitalised() && !STOP.contains(&tokens[i].text) {
            let end = with_suffix(tokens, name_end(tokens, i).unwrap_or(i + 1));
            push(&mut out, tokens, i, end);
            end
        } else {
            i + 1
        };
        i = end.max(i + 1);
    }
    out
}

/// Records the mention `tokens[start..end]` unless it is junk: a single letter, a [`JUNK`] word, a lone
/// sentence-opening word that looks like an adverb or participle ("Originally", "Nominated", "Following"), or a
/// run longer than [`MAX_NAME_TOKENS`].
fn push(out: &mut Vec<Mention>, tokens: &[Token<'_>], start: usize, end: usize) {
    if start >= end {
        return;
    }
    let text = join(&tokens[start..end]);
    let key = normalize_phrase(&text);
    let opener = start == 0 && end == 1 && ["ly", "ed", "ing"].iter().any(|s| text.ends_with(s));
    if key.len() > 1 && !JUNK.contains(&key.as_str()) && !opener && end - start <= MAX_NAME_TOKENS {
        out.push(Mention { text, start, end });
    }
}

/// The surface text of a token run: words separated by single spaces, punctuation glued to the word before it
/// ("May 5, 1990", "Jehovah's Witnesses").
fn join(tokens: &[Token<'_>]) -> String {
    let mut s = String::new();
    for (i, t) in tokens.iter().enumerate() {
        let glued = t.kind == Kind::Punct && !matches!(t.text, "&" | "-" | "–" | "—" | "(");
        if i > 0 && !glued && tokens[i - 1].text != "(" {
            s.push(' ');
        }
        s.push_str(t.text);
    }
    s
}

/// The end of the capitalised name starting at `start` (`None` if no capitalised word is there): capitalised words
/// and short numbers, joined across a connector ("of"), a connector and an article ("of the") or a possessive
/// ("Jehovah's Witnesses") when a capitalised word follows. A name stops before a date.
fn name_end(tokens: &[Token<'_>], start: usize) -> Option<usize> {
    if !tokens.get(start)?.capitalised() {
        return None;
    }
    let is_in = |k: usize, list: &[&str]| tokens.get(k).is_some_and(|t| list.contains(&t.text));
    let name_word = |k: usize| {
        tokens
            .get(k)
            .is_some_and(|t| t.capitalised() && !STOP.contains(&t.text))
    };
    let possessive = |k: usize| {
        tokens
            .get(k)
            .is_some_and(|t| t.kind == Kind::Punct && t.text.ends_with('s'))
    };
    let mut end = start + 1;
    while let Some(t) = tokens.get(end) {
        if date(tokens, end).is_some() {
            break;
        } else if t.capitalised() {
            end += 1;
        } else if t.kind == Kind::Number
            && t.text.len() <= 3
            && !tokens.get(end + 1).is_some_and(Token::capitalised)
        {
            // "Apollo 11", "Jackson 5"; not the numbers of a flattened table ("Western Province 34 Four").
            end += 1;
        } else if (is_in(end, CONNECTORS) || possessive(end)) && name_word(end + 1) {
            end += 2;
        } else if is_in(end, CONNECTORS) && is_in(end + 1, ARTICLES) && name_word(end + 2) {
            end += 3;
        } else {
            break;
        }
    }
    Some(end)
}

/// Extends a name ending at `end` over a ", Inc."-like suffix.
fn with_suffix(tokens: &[Token<'_>], end: usize) -> usize {
    if !tokens.get(end).is_some_and(|t| t.is(",")) {
        return end;
    }
    if tokens
        .get(end + 1)
        .is_some_and(|t| SUFFIXES.contains(&t.text))
    {
        return end + 2;
    }
    end
}

/// A date starting at `i`: "May 5, 1990", "May 1990", "5 May 1990", "May 5". Returns its end.
fn date(tokens: &[Token<'_>], i: usize) -> Option<usize> {
    let t = |k: usize| tokens.get(k);
    let day = |k: usize| t(k).is_some_and(|t| t.kind == Kind::Number && t.text.len() <= 2);
    let year = |k: usize| t(k).is_some_and(|t| t.kind == Kind::Number && t.text.len() == 4);
    let month = |k: usize| t(k).is_some_and(|t| MONTHS.contains(&t.text));
    if month(i) {
        if day(i + 1) {
            if t(i + 2).is_some_and(|t| t.is(",")) && year(i + 3) {
                return Some(i + 4);
            }
            return Some(if year(i + 2) { i + 3 } else { i + 2 });
        }
        return year(i + 1).then_some(i + 2);
    }
    if day(i) && month(i + 1) {
        return Some(if year(i + 2) { i + 3 } else { i + 2 });
    }
    None
}

/// A year ("1998", "1990s") or a century ("19th century") starting at `i`. Returns its end.
fn year_or_century(tokens: &[Token<'_>], i: usize) -> Option<usize> {
    let t = tokens[i].text;
    if tokens[i].kind != Kind::Number {
        return None;
    }
    let digits = t.trim_end_matches('s');
    if digits.len() == 4
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (t.starts_with('1') || t.starts_with("20"))
    {
        return Some(i + 1);
    }
    let ordinal = ["st", "nd", "rd", "th"].iter().any(|s| t.ends_with(s));
    let century = tokens
        .get(i + 1)
        .is_some_and(|n| n.is("century") || n.is("centuries"));
    (ordinal && century).then_some(i + 2)
}

/// A quoted title starting at `i`: returns the end just after the closing quote.
fn quoted(tokens: &[Token<'_>], i: usize) -> Option<usize> {
    let close = match tokens[i].text {
        "\"" => "\"",
        "“" => "”",
        _ => return None,
    };
    let len = tokens[i + 1..]
        .iter()
        .take(MAX_QUOTED_TOKENS + 1)
        .position(|t| t.is(close))?;
    let first = tokens.get(i + 1)?;
    (len > 0 && (first.capitalised() || first.kind == Kind::Number)).then_some(i + len + 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ents(text: &str) -> Vec<String> {
        FallbackExtractor::default().entities_of(text)
    }

    #[test]
    fn finds_names_dates_years_and_quoted_titles() {
        let e = ents(
            "The Journal of Mathematical Physics is published by the American Institute of Physics. \
             It was first published in January 1960; Jan Philip Solovej joined on May 5, 1990 with 3,000 \
             others, 2 years before the 1992 Summer Olympics and in the 19th century.",
        );
        let want = [
            "Journal of Mathematical Physics",
            "American Institute of Physics",
            "January 1960",
            "Jan Philip Solovej",
            "May 5, 1990",
            "1992 Summer Olympics",
            "19th century",
        ];
        assert_eq!(e, want);
        assert_eq!(
            ents("He sang \"Let It Be\" in Liverpool, not \"yesterday\"."),
            ["Let It Be", "Liverpool"]
        );
        assert_eq!(
            ents("On 9 July 2011 a 1997 American film"),
            ["9 July 2011", "1997", "American"]
        );
    }

    #[test]
    fn joins_connectors_possessives_and_suffixes() {
        assert_eq!(
            ents("In 1990, he joined Vasco da Gama and the Bank of the United States."),
            ["1990", "Vasco da Gama", "Bank of the United States"]
        );
        assert_eq!(
            ents("Jehovah's Witnesses met Mr. & Mrs. Smith at Publix Super Markets, Inc. near Apollo 11."),
            ["Jehovah's Witnesses", "Mr. & Mrs. Smith", "Publix Super Markets, Inc.", "Apollo 11"]
        );
        assert_eq!(
            ents("Tennessee's governor met Dr. Smith."),
            ["Tennessee", "Dr. Smith"]
        );
        assert_eq!(
            ents("It is the novel The Sensory Order."),
            ["The Sensory Order"]
        );
    }

    #[test]
    fn handles_initials_and_sentence_ends() {
        assert_eq!(
            ents("J. R. R. Tolkien moved to the U.S. in 1950."),
            ["J. R. R. Tolkien", "U.S.", "1950"]
        );
        let s = sentences("She won World War I. The treaty followed. It was signed in Paris.");
        assert_eq!(s.len(), 3);
        assert_eq!(sentences("Born in the U.S. he left.").len(), 1);
    }

    #[test]
    fn skips_function_words_junk_and_tables() {
        assert_eq!(ents("Who is the spouse of the Green performer?"), ["Green"]);
        assert_eq!(
            ents("Originally, it was 5 °C at 7 PM."),
            Vec::<String>::new()
        );
        assert!(ents(
            "Starring Krysten Ritter Mike Colter Rachael Taylor Wil Traval Erin Moriarty"
        )
        .is_empty());
    }

    #[test]
    fn never_panics_on_odd_text() {
        let odd = [
            "",
            " ",
            "'s",
            "’s",
            "\"",
            "“",
            "”Ab",
            "A.",
            ".",
            "U.S.",
            "1,",
            ",1",
            "-A",
            "A-",
            "São Tomé’s Île",
            "日本 東京",
            "May",
            "May 5,",
            "The",
            "of the",
            "\"\"",
            "\"A",
            "A \" B",
            "Ab's",
            "Ab'",
            "x'y",
            "3,000,",
            "1990s.",
        ];
        let x = FallbackExtractor::default();
        for text in odd {
            let _ = x.entities_of(text);
            let _ = x.extract_passage(&PassageInput { title: text, text });
        }
    }

    #[test]
    fn links_consecutive_entities_and_the_title() {
        let p = PassageInput {
            title: "Green (band)",
            text: "It was formed in Chicago in 1984 by Jeff Lescher. Green toured Europe.",
        };
        let x = FallbackExtractor::default().extract_passage(&p);
        assert_eq!(
            x.entities,
            ["Green", "Chicago", "1984", "Jeff Lescher", "Europe"]
        );
        let has = |s: &str, r: &str, o: &str| x.triples.contains(&triple(s, r, o));
        assert!(has("Chicago", "in", "1984"));
        assert!(has("1984", "by", "Jeff Lescher"));
        assert!(has("Green", "toured", "Europe"));
        for e in &x.entities[1..] {
            assert!(has("Green", "mentions", e));
        }
        assert!(!x
            .triples
            .iter()
            .any(|t| t.subject == "Jeff Lescher" && t.object == "Europe"));
        assert_eq!(x.triples.len(), 3 + 4);
        let many = FallbackExtractor::default().extract_passage(&PassageInput {
            title: "T",
            text: "Paris is a very old and very large and very famous city near Rome, London.",
        });
        assert!(many
            .triples
            .contains(&triple("Paris", "related to", "Rome")));
        assert!(many
            .triples
            .contains(&triple("Rome", "co-occurs with", "London")));
        assert_eq!(FallbackExtractor::default().name(), "fallback");
    }
}
