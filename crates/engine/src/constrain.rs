//! Decoding constrained to a JSON shape, so that every output parses, even from a random-weight model.
//!
//! A [`JsonShape`] (strings, arrays of bounded length, objects with fixed keys in order) is compiled with the
//! model's vocabulary into a [`JsonConstraint`]. At every step [`JsonConstraint::allowed`] lists the tokens whose
//! bytes keep the output a prefix of compact JSON of that shape *and* leave enough tokens to close it within the
//! request's `max_tokens` (every byte is one token in byte-level vocabularies, so closing is always possible).
//! The output is compact: no whitespace outside strings, no escapes inside them, UTF-8 kept whole.
//!
//! Masks are cheap enough for 128k-token vocabularies: inside a string every token made only of plain string
//! bytes is allowed at once (by length), and only the other tokens (quotes, control bytes, partial characters)
//! are simulated; elsewhere only the tokens whose first byte fits are simulated.

use super::model::tokenizer::gpt2_byte_chars;
use super::model::ModelTokenizer;

/// The shape of the JSON value to generate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JsonShape {
    /// A string of 1 to `max_bytes` bytes (UTF-8, no escapes).
    String {
        /// Most bytes of content.
        max_bytes: usize,
    },
    /// An array of `min_items..=max_items` values of one shape.
    Array {
        /// The items' shape.
        item: Box<JsonShape>,
        /// Fewest items.
        min_items: usize,
        /// Most items.
        max_items: usize,
    },
    /// An object with exactly these keys, in this order.
    Object(Vec<(String, JsonShape)>),
}

/// Why a shape or a vocabulary cannot be used for constrained decoding.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConstraintError {
    /// The shape is invalid (an empty range, a key that needs escaping, nesting too deep).
    #[error("invalid JSON shape: {0}")]
    Shape(String),
    /// The vocabulary cannot spell every structural byte with a single token.
    #[error("the vocabulary has no single token for {0:?}: constrained decoding needs a byte-level vocabulary")]
    Vocabulary(char),
}

/// Deepest nesting a shape may have.
pub const MAX_DEPTH: usize = 8;

#[derive(Debug, Clone)]
enum Node {
    Str {
        max: u16,
    },
    Array {
        item: u16,
        min: u16,
        max: u16,
    },
    /// Literal before each field (`{"k":` then `,"k":`), the fields' nodes, and the closing `}`.
    Object {
        lits: Vec<Vec<u8>>,
        fields: Vec<u16>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum After {
    /// Just after `[`.
    Open,
    /// After an item.
    Item,
    /// After `,`.
    Comma,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Frame {
    /// Expecting the first byte of a value of this node.
    Value { node: u16 },
    /// Inside a string: bytes so far, continuation bytes still owed by a multi-byte character, and the range
    /// the next one must fall in (narrower after some lead bytes: no overlong forms, no surrogates).
    Str {
        node: u16,
        len: u16,
        cont: u8,
        lo: u8,
        hi: u8,
    },
    /// Inside an array: items begun so far.
    Array { node: u16, count: u16, after: After },
    /// Inside an object: writing the literal before `field` (or the closing `}` when `field` is the count).
    Object { node: u16, field: u16, pos: u16 },
}

/// The tokens allowed at one step: every plain-content token of at most `content_max` bytes (0: none), and `ids`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allowed {
    /// Longest plain-content token allowed (inside a string, within its byte budget).
    pub content_max: usize,
    /// The other allowed tokens.
    pub ids: Vec<u32>,
}

impl Allowed {
    /// Whether nothing at all is allowed.
    pub fn is_empty(&self) -> bool {
        self.content_max == 0 && self.ids.is_empty()
    }
}

/// Where a constrained generation stands: a stack of open values. Cheap to copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct JsonState {
    frames: [Frame; MAX_DEPTH],
    depth: u8,
}

/// A [`JsonShape`] compiled against one vocabulary.
#[derive(Debug)]
pub struct JsonConstraint {
    nodes: Vec<Node>,
    root: u16,
    /// Fewest bytes that complete a value of each node.
    min_value: Vec<usize>,
    /// Each token's bytes (`None`: special or unknown tokens, never allowed).
    tokens: Vec<Option<Box<[u8]>>>,
    /// Length of each token made only of plain string bytes (printable ASCII but `"` and `\`, or whole UTF-8
    /// characters); 0 for the others.
    content_len: Vec<u16>,
    /// Every other token (those holding a `"`, which can end a string, control bytes, partial characters).
    other: Vec<u32>,
    /// Tokens by first byte.
    by_first: Vec<Vec<u32>>,
}

impl JsonConstraint {
    /// Compiles `shape` for the vocabulary of `tokenizer`.
    pub fn new(shape: &JsonShape, tokenizer: &ModelTokenizer) -> Result<Self, ConstraintError> {
        Self::with_tokens(shape, token_bytes(tokenizer))
    }

    /// Compiles `shape` for a vocabulary given as each token's bytes (`None` for tokens never to emit).
    pub fn with_tokens(
        shape: &JsonShape,
        tokens: Vec<Option<Vec<u8>>>,
    ) -> Result<Self, ConstraintError> {
        let mut nodes = Vec::new();
        let root = compile(shape, &mut nodes, 1)?;
        let mut min_value = vec![0; nodes.len()];
        // Children are compiled before their parents, so one pass in order fills every entry.
        for i in 0..nodes.len() {
            min_value[i] = match &nodes[i] {
                Node::Str { .. } => 3,
                Node::Array { item, min, .. } => {
                    let m = *min as usize;
                    2 + m * min_value[*item as usize] + m.saturating_sub(1)
                }
                Node::Object { lits, fields } => {
                    lits.iter().map(Vec::len).sum::<usize>()
                        + fields.iter().map(|&f| min_value[f as usize]).sum::<usize>()
                }
            };
        }
        for c in ['"', '[', ']', ',', '{', '}', ':'] {
            let b = c as u8;
            if !tokens.iter().any(|t| t.as_deref() == Some(&[b][..])) {
                return Err(ConstraintError::Vocabulary(c));
            }
        }
        let tokens: Vec<Option<Box<[u8]>>> = tokens
            .into_iter()
            .map(|t| t.filter(|b| !b.is_empty()).map(Vec::into_boxed_slice))
            .collect();
        let mut content_len = vec![0u16; tokens.len()];
        let mut other = Vec::new();
        let mut by_first = vec![Vec::new(); 256];
        for (id, t) in tokens.iter().enumerate() {
            let Some(b) = t else { continue };
            by_first[b[0] as usize].push(id as u32);
            if plain_content(b) {
                content_len[id] = b.len().min(u16::MAX as usize) as u16;
            } else {
                other.push(id as u32);
            }
        }
        Ok(Self {
            nodes,
            root,
            min_value,
            tokens,
            content_len,
            other,
            by_first,
        })
    }

    /// The state before the first token.
    pub fn start(&self) -> JsonState {
        let mut frames = [Frame::Value { node: 0 }; MAX_DEPTH];
        frames[0] = Frame::Value { node: self.root };
        JsonState { frames, depth: 1 }
    }

    /// Fewest tokens a whole output takes (`max_tokens` must be at least this).
    pub fn min_tokens(&self) -> usize {
        self.min_close(&self.start())
    }

    /// Whether the JSON value is complete (nothing more may be generated).
    pub fn is_complete(&self, state: &JsonState) -> bool {
        state.depth == 0
    }

    /// The state after `token`, or `None` when the token is not allowed there (budget aside).
    pub fn advance(&self, state: &JsonState, token: u32) -> Option<JsonState> {
        let bytes = self.tokens.get(token as usize)?.as_deref()?;
        let mut s = *state;
        bytes.iter().all(|&b| self.feed(&mut s, b)).then_some(s)
    }

    /// The tokens allowed after `state` when `remaining` tokens may still be generated (this one included):
    /// those that keep the output valid and leave enough tokens to close it. Never empty while the value is
    /// incomplete and `remaining` is at least the fewest tokens that close it.
    pub fn allowed(&self, state: &JsonState, remaining: usize) -> Allowed {
        let mut out = Allowed {
            content_max: 0,
            ids: Vec::new(),
        };
        if state.depth == 0 || remaining == 0 {
            return out;
        }
        let after = remaining - 1;
        let fits = |s: &JsonState| self.min_close(s) <= after;
        let top = state.frames[state.depth as usize - 1];
        if let Frame::Str {
            node, len, cont: 0, ..
        } = top
        {
            // Plain content tokens: allowed up to the string's byte budget, if the budget to close still holds.
            let Node::Str { max } = self.nodes[node as usize] else {
                unreachable!("a string frame points at a string node")
            };
            let mut grown = *state;
            grown.frames[state.depth as usize - 1] = Frame::Str {
                node,
                len: len.max(1),
                cont: 0,
                lo: 0x80,
                hi: 0xBF,
            };
            if fits(&grown) {
                out.content_max = (max - len) as usize;
            }
            for &id in &self.other {
                if self.advance(state, id).is_some_and(|s| fits(&s)) {
                    out.ids.push(id);
                }
            }
            return out;
        }
        for first in 0..=255u8 {
            let mut s = *state;
            if !self.feed(&mut s, first) {
                continue;
            }
            for &id in &self.by_first[first as usize] {
                if self.advance(state, id).is_some_and(|s| fits(&s)) {
                    out.ids.push(id);
                }
            }
        }
        out
    }

    /// The allowed token with the largest logit (lowest id on ties), in one read-only pass; `None` when nothing
    /// is allowed. The same choice as masking then taking the argmax, without writing the logits.
    pub fn argmax(&self, logits: &[f32], allowed: &Allowed) -> Option<u32> {
        let mut best: Option<(f32, u32)> = None;
        let mut consider = |id: u32, l: f32| {
            if best.is_none_or(|(b, bid)| l > b || (l == b && id < bid)) {
                best = Some((l, id));
            }
        };
        if allowed.content_max > 0 {
            for (i, (&l, &n)) in logits.iter().zip(&self.content_len).enumerate() {
                if n > 0 && n as usize <= allowed.content_max && !l.is_nan() {
                    consider(i as u32, l);
                }
            }
        }
        for &id in &allowed.ids {
            if let Some(&l) = logits.get(id as usize).filter(|l| !l.is_nan()) {
                consider(id, l);
            }
        }
        best.map(|(_, id)| id)
    }

    /// Sets every logit outside `allowed` to minus infinity (logits past the vocabulary too), in one pass.
    pub fn mask(&self, logits: &mut [f32], allowed: &Allowed) {
        let keep: Vec<(usize, f32)> = allowed
            .ids
            .iter()
            .filter_map(|&id| logits.get(id as usize).map(|&l| (id as usize, l)))
            .collect();
        for (i, l) in logits.iter_mut().enumerate() {
            let n = self.content_len.get(i).copied().unwrap_or(0) as usize;
            if n == 0 || n > allowed.content_max {
                *l = f32::NEG_INFINITY;
            }
        }
        for (i, l) in keep {
            logits[i] = l;
        }
    }

    /// Fewest bytes that complete the value from `state`.
    fn min_close(&self, state: &JsonState) -> usize {
        let mut total = 0;
        for f in &state.frames[..state.depth as usize] {
            total += match *f {
                Frame::Value { node } => self.min_value[node as usize],
                Frame::Str { len, cont, .. } => cont as usize + usize::from(len == 0) + 1,
                Frame::Array { node, count, after } => {
                    let Node::Array { item, min, .. } = self.nodes[node as usize] else {
                        unreachable!("an array frame points at an array node")
                    };
                    let item = self.min_value[item as usize];
                    let owed = min.saturating_sub(count) as usize;
                    match after {
                        After::Item => owed * (item + 1) + 1,
                        After::Open => owed * item + owed.saturating_sub(1) + 1,
                        After::Comma => {
                            let r = owed.max(1);
                            r * item + (r - 1) + 1
                        }
                    }
                }
                Frame::Object { node, field, pos } => {
                    let Node::Object { lits, fields } = &self.nodes[node as usize] else {
                        unreachable!("an object frame points at an object node")
                    };
                    let f = field as usize;
                    let mut n = lits[f].len() - pos as usize;
                    for later in f..fields.len() {
                        n += self.min_value[fields[later] as usize];
                        if later > f {
                            n += lits[later].len();
                        }
                    }
                    if f < fields.len() {
                        n += lits[fields.len()].len();
                    }
                    n
                }
            };
        }
        total
    }

    /// Takes one byte; false (state unspecified) when it is not allowed.
    fn feed(&self, s: &mut JsonState, b: u8) -> bool {
        loop {
            if s.depth == 0 {
                return false;
            }
            let top = s.depth as usize - 1;
            match s.frames[top] {
                Frame::Value { node } => return self.open_value(s, top, node, b),
                Frame::Str {
                    node,
                    len,
                    cont,
                    lo,
                    hi,
                } => return self.feed_str(s, top, node, (len, cont, lo, hi), b),
                Frame::Array { node, count, after } => {
                    if let Some(taken) = self.feed_array(s, top, node, count, after, b) {
                        return taken;
                    }
                    // A new item was opened, and the byte goes to it.
                }
                Frame::Object { node, field, pos } => {
                    return self.feed_object(s, top, node, field, pos, b)
                }
            }
        }
    }

    /// A value's first byte: `"`, `[` or `{` as its node says.
    fn open_value(&self, s: &mut JsonState, top: usize, node: u16, b: u8) -> bool {
        let opened = match self.nodes[node as usize] {
            Node::Str { .. } if b == b'"' => Frame::Str {
                node,
                len: 0,
                cont: 0,
                lo: 0x80,
                hi: 0xBF,
            },
            Node::Array { .. } if b == b'[' => Frame::Array {
                node,
                count: 0,
                after: After::Open,
            },
            Node::Object { .. } if b == b'{' => Frame::Object {
                node,
                field: 0,
                pos: 1,
            },
            _ => return false,
        };
        s.frames[top] = opened;
        true
    }

    /// A byte inside a string: a UTF-8 continuation, the closing quote, or a new character within `max`.
    fn feed_str(
        &self,
        s: &mut JsonState,
        top: usize,
        node: u16,
        (len, cont, lo, hi): (u16, u8, u8, u8),
        b: u8,
    ) -> bool {
        let Node::Str { max } = self.nodes[node as usize] else {
            return false;
        };
        if cont > 0 {
            if !(lo..=hi).contains(&b) {
                return false;
            }
            s.frames[top] = Frame::Str {
                node,
                len: len + 1,
                cont: cont - 1,
                lo: 0x80,
                hi: 0xBF,
            };
            return true;
        }
        if b == b'"' {
            if len == 0 {
                return false;
            }
            s.depth -= 1;
            return true;
        }
        let Some((owed, lo, hi)) = utf8_lead(b) else {
            return false;
        };
        if len + 1 + owed as u16 > max {
            return false;
        }
        s.frames[top] = Frame::Str {
            node,
            len: len + 1,
            cont: owed,
            lo,
            hi,
        };
        true
    }

    /// A byte inside an array: its end, a comma, or the start of an item (then `None`: the item's frame is
    /// pushed and the byte goes to it).
    fn feed_array(
        &self,
        s: &mut JsonState,
        top: usize,
        node: u16,
        count: u16,
        after: After,
        b: u8,
    ) -> Option<bool> {
        let Node::Array { item, min, max } = self.nodes[node as usize] else {
            return Some(false);
        };
        let start_item = match (after, b) {
            (After::Open | After::Item, b']') if count >= min => {
                s.depth -= 1;
                return Some(true);
            }
            (After::Item, b',') if count < max => {
                s.frames[top] = Frame::Array {
                    node,
                    count,
                    after: After::Comma,
                };
                return Some(true);
            }
            (After::Open, _) => count < max,
            (After::Comma, _) => true,
            _ => false,
        };
        if !start_item || s.depth as usize == MAX_DEPTH {
            return Some(false);
        }
        s.frames[top] = Frame::Array {
            node,
            count: count + 1,
            after: After::Item,
        };
        s.frames[top + 1] = Frame::Value { node: item };
        s.depth += 1;
        None
    }

    /// A byte of an object's fixed text (its keys and punctuation); at the end of a key, its value's frame.
    fn feed_object(
        &self,
        s: &mut JsonState,
        top: usize,
        node: u16,
        field: u16,
        pos: u16,
        b: u8,
    ) -> bool {
        let Node::Object { lits, fields } = &self.nodes[node as usize] else {
            return false;
        };
        let lit = &lits[field as usize];
        if lit.get(pos as usize) != Some(&b) {
            return false;
        }
        if (pos as usize) + 1 < lit.len() {
            s.frames[top] = Frame::Object {
                node,
                field,
                pos: pos + 1,
            };
        } else if (field as usize) == fields.len() {
            s.depth -= 1;
        } else {
            if s.depth as usize == MAX_DEPTH {
                return false;
            }
            s.frames[top] = Frame::Object {
                node,
                field: field + 1,
                pos: 0,
            };
            s.frames[top + 1] = Frame::Value {
                node: fields[field as usize],
            };
            s.depth += 1;
        }
        true
    }
}

/// Whether every byte of `b` may appear inside a string: printable ASCII but `"` and `\`, and whole UTF-8
/// characters.
fn plain_content(b: &[u8]) -> bool {
    let mut i = 0;
    while i < b.len() {
        let Some((owed, lo, hi)) = utf8_lead(b[i]).filter(|_| b[i] != b'"') else {
            return false;
        };
        for k in 1..=owed as usize {
            let (lo, hi) = if k == 1 { (lo, hi) } else { (0x80, 0xBF) };
            if !b.get(i + k).is_some_and(|c| (lo..=hi).contains(c)) {
                return false;
            }
        }
        i += 1 + owed as usize;
    }
    true
}

/// A byte that may start a character inside a string (printable ASCII but `\`, or a UTF-8 lead byte): the
/// continuation bytes it needs and the range of the first one (`None`: not allowed). The quote, which ends the
/// string, is the caller's business.
fn utf8_lead(b: u8) -> Option<(u8, u8, u8)> {
    Some(match b {
        0x20..=0x7E if b != b'\\' => (0, 0x80, 0xBF),
        0xC2..=0xDF => (1, 0x80, 0xBF),
        0xE0 => (2, 0xA0, 0xBF),
        0xED => (2, 0x80, 0x9F),
        0xE1..=0xEF => (2, 0x80, 0xBF),
        0xF0 => (3, 0x90, 0xBF),
        0xF4 => (3, 0x80, 0x8F),
        0xF1..=0xF3 => (3, 0x80, 0xBF),
        _ => return None,
    })
}

fn compile(shape: &JsonShape, nodes: &mut Vec<Node>, depth: usize) -> Result<u16, ConstraintError> {
    if depth > MAX_DEPTH {
        return Err(ConstraintError::Shape(format!(
            "nested deeper than {MAX_DEPTH}"
        )));
    }
    let small = |n: usize, what: &str| {
        u16::try_from(n)
            .ok()
            .filter(|&v| v < u16::MAX)
            .ok_or_else(|| ConstraintError::Shape(format!("{what} {n} is too large")))
    };
    let node = match shape {
        JsonShape::String { max_bytes } => {
            if *max_bytes == 0 {
                return Err(ConstraintError::Shape("a string of at most 0 bytes".into()));
            }
            Node::Str {
                max: small(*max_bytes, "max_bytes")?,
            }
        }
        JsonShape::Array {
            item,
            min_items,
            max_items,
        } => {
            if min_items > max_items || *max_items == 0 {
                return Err(ConstraintError::Shape(format!(
                    "an array of {min_items}..={max_items} items"
                )));
            }
            let item = compile(item, nodes, depth + 1)?;
            Node::Array {
                item,
                min: small(*min_items, "min_items")?,
                max: small(*max_items, "max_items")?,
            }
        }
        JsonShape::Object(fields) => {
            let mut lits = Vec::new();
            let mut ids = Vec::new();
            for (i, (key, value)) in fields.iter().enumerate() {
                if key.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20) {
                    return Err(ConstraintError::Shape(format!(
                        "key {key:?} needs escaping"
                    )));
                }
                lits.push(format!("{}\"{key}\":", if i == 0 { '{' } else { ',' }).into_bytes());
                ids.push(compile(value, nodes, depth + 1)?);
            }
            lits.push(if fields.is_empty() {
                b"{}".to_vec()
            } else {
                b"}".to_vec()
            });
            Node::Object { lits, fields: ids }
        }
    };
    nodes.push(node);
    small(nodes.len() - 1, "shape size")
}

/// Each token's bytes in `tokenizer`'s vocabulary: byte-level BPE (GPT-2's byte-to-character mapping, as in
/// Llama 3 and Qwen) or SentencePiece-style (`▁` for a space, `<0xNN>` byte tokens). Added and special tokens,
/// and ids without a token, are `None`.
pub fn token_bytes(tokenizer: &ModelTokenizer) -> Vec<Option<Vec<u8>>> {
    let inner = tokenizer.inner();
    let size = inner.get_vocab_size(true);
    let added: std::collections::HashSet<u32> =
        inner.get_added_tokens_decoder().keys().copied().collect();
    let chars = gpt2_byte_chars();
    let byte_of: std::collections::HashMap<char, u8> = chars
        .iter()
        .enumerate()
        .map(|(b, &c)| (c, b as u8))
        .collect();
    let byte_level = chars
        .iter()
        .all(|c| inner.token_to_id(&c.to_string()).is_some());
    (0..size as u32)
        .map(|id| {
            if added.contains(&id) {
                return None;
            }
            let t = inner.id_to_token(id)?;
            if byte_level {
                t.chars().map(|c| byte_of.get(&c).copied()).collect()
            } else if let Some(hex) = t.strip_prefix("<0x").and_then(|h| h.strip_suffix('>')) {
                u8::from_str_radix(hex, 16).ok().map(|b| vec![b])
            } else {
                Some(t.replace('\u{2581}', " ").into_bytes())
            }
        })
        .collect()
}

/// Membership queries on an [`Allowed`] set, for tests, fuzzing and callers that pick tokens themselves.
impl JsonConstraint {
    /// Whether `token` is in `allowed`.
    pub fn contains(&self, allowed: &Allowed, token: u32) -> bool {
        let n = self.content_len.get(token as usize).copied().unwrap_or(0) as usize;
        (n > 0 && n <= allowed.content_max) || allowed.ids.contains(&token)
    }

    /// Every token of `allowed`, in id order.
    pub fn allowed_ids(&self, allowed: &Allowed) -> Vec<u32> {
        let mut ids: Vec<u32> = (0..self.content_len.len() as u32)
            .filter(|&t| {
                let n = self.content_len[t as usize] as usize;
                n > 0 && n <= allowed.content_max
            })
            .chain(allowed.ids.iter().copied())
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(max_items: usize, max_bytes: usize) -> JsonShape {
        JsonShape::Array {
            item: Box::new(JsonShape::String { max_bytes }),
            min_items: 0,
            max_items,
        }
    }

    /// The triples shape of open-IE: an object of arrays of three-string arrays.
    fn triples_shape() -> JsonShape {
        JsonShape::Object(vec![
            ("entities".into(), strings(4, 12)),
            (
                "triples".into(),
                JsonShape::Array {
                    item: Box::new(JsonShape::Array {
                        item: Box::new(JsonShape::String { max_bytes: 10 }),
                        min_items: 3,
                        max_items: 3,
                    }),
                    min_items: 0,
                    max_items: 3,
                },
            ),
        ])
    }

    /// All 256 bytes, some merged tokens (structural runs, words, a whole two-byte character, a partial one),
    /// and a special token.
    fn vocab() -> Vec<Option<Vec<u8>>> {
        let mut v: Vec<Option<Vec<u8>>> = (0..=255u8).map(|b| Some(vec![b])).collect();
        for t in [
            "\"]",
            "\",\"",
            "[\"",
            "{\"entities\":[",
            "],\"triples\":[[",
            "\"]]}",
            "abc",
            " the",
            "é",
            "\"a\"",
            "]}",
            "\\n",
        ] {
            v.push(Some(t.as_bytes().to_vec()));
        }
        v.push(Some(vec![0xE2, 0x82])); // the first two bytes of "€"
        v.push(None);
        v
    }

    struct Rng(u64);
    impl Rng {
        fn below(&mut self, n: usize) -> usize {
            self.0 = crate::backend::mix64(self.0);
            (self.0 % n as u64) as usize
        }
    }

    /// Random walks over the allowed tokens; returns the bytes and the token count.
    fn walk(c: &JsonConstraint, max_tokens: usize, seed: u64) -> (Vec<u8>, usize) {
        let mut rng = Rng(seed);
        let mut s = c.start();
        let mut out = Vec::new();
        let mut n = 0;
        while !c.is_complete(&s) {
            let allowed = c.allowed_ids(&c.allowed(&s, max_tokens - n));
            assert!(
                !allowed.is_empty(),
                "stuck after {:?}",
                String::from_utf8_lossy(&out)
            );
            let t = allowed[rng.below(allowed.len())];
            s = c.advance(&s, t).expect("an allowed token advances");
            out.extend_from_slice(c.tokens[t as usize].as_deref().unwrap());
            n += 1;
            assert!(n <= max_tokens, "ran past max_tokens");
        }
        assert!(c.allowed(&s, 5).is_empty(), "nothing after the end");
        (out, n)
    }

    #[test]
    fn random_walks_always_parse_and_fit_the_shape_and_the_budget() {
        let c = JsonConstraint::with_tokens(&triples_shape(), vocab()).unwrap();
        let least = c.min_tokens();
        assert_eq!(least, "{\"entities\":[],\"triples\":[]}".len());
        for seed in 0..300u64 {
            let max_tokens = least + (seed as usize * 7) % 80;
            let (bytes, n) = walk(&c, max_tokens, seed);
            assert!(n <= max_tokens);
            let text = String::from_utf8_lossy(&bytes);
            let v: serde_json::Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("seed {seed}: {text:?} does not parse: {e}"));
            let ents = v["entities"].as_array().unwrap();
            assert!(ents.len() <= 4);
            for e in ents {
                let e = e.as_str().unwrap();
                assert!(!e.is_empty() && e.len() <= 12, "{e:?}");
            }
            let triples = v["triples"].as_array().unwrap();
            assert!(triples.len() <= 3);
            for t in triples {
                let t = t.as_array().unwrap();
                assert_eq!(t.len(), 3);
                assert!(t
                    .iter()
                    .all(|x| (1..=10).contains(&x.as_str().unwrap().len())));
            }
        }
    }

    #[test]
    fn the_tightest_budget_gives_the_smallest_value() {
        // Single-byte tokens only: with merged tokens a tight budget in tokens leaves room in bytes.
        let bytes: Vec<Option<Vec<u8>>> = (0..=255u8).map(|b| Some(vec![b])).collect();
        let c = JsonConstraint::with_tokens(&triples_shape(), bytes.clone()).unwrap();
        for seed in 0..20 {
            let (out, _) = walk(&c, c.min_tokens(), seed);
            assert_eq!(out, b"{\"entities\":[],\"triples\":[]}");
        }
        let arr = JsonShape::Array {
            item: Box::new(JsonShape::String { max_bytes: 3 }),
            min_items: 2,
            max_items: 2,
        };
        let c = JsonConstraint::with_tokens(&arr, bytes).unwrap();
        assert_eq!(c.min_tokens(), "[\"x\",\"y\"]".len());
    }

    #[test]
    fn tokens_are_checked_byte_by_byte() {
        let c = JsonConstraint::with_tokens(&triples_shape(), vocab()).unwrap();
        let id = |t: &str| {
            vocab()
                .iter()
                .position(|v| v.as_deref() == Some(t.as_bytes()))
                .unwrap() as u32
        };
        let s = c.start();
        assert!(
            c.advance(&s, id(" the")).is_none(),
            "no whitespace outside strings"
        );
        let s = c.advance(&s, id("{\"entities\":[")).unwrap();
        assert!(
            c.advance(&s, id("]}")).is_none(),
            "the triples key is required"
        );
        let s = c.advance(&s, id("\"")).unwrap();
        assert!(c.advance(&s, id("\"")).is_none(), "no empty strings");
        assert!(c.advance(&s, id("\\n")).is_none(), "no escapes");
        let s = c.advance(&s, id("é")).unwrap();
        let partial = c.advance(&s, 256 + 12).unwrap(); // a lead byte and one continuation byte
        assert!(
            c.advance(&partial, id("\"")).is_none(),
            "a character is not cut"
        );
        assert!(c.advance(&partial, 0x82).is_some());
        let s = c.advance(&s, id("abc")).unwrap();
        let s = c.advance(&s, id("\",\"")).unwrap();
        let s = c.advance(&s, id("a")).unwrap();
        let s = c.advance(&s, id("\"")).unwrap();
        let s = c.advance(&s, id("],\"triples\":[[")).unwrap();
        // Inside a triple, ']' is refused until it has three strings.
        let s = c.advance(&s, id("\"a\"")).unwrap();
        assert!(c.advance(&s, id("]")).is_none());
        assert!(!c.contains(&c.allowed(&s, 100), id("]")));
        assert!(c.advance(&s, 256 + 13).is_none(), "special tokens never");
    }

    #[test]
    fn the_fused_argmax_is_the_masked_argmax() {
        let c = JsonConstraint::with_tokens(&triples_shape(), vocab()).unwrap();
        let mut rng = Rng(7);
        let n = vocab().len() + 5; // logits past the vocabulary are never chosen
        for seed in 0..50u64 {
            // States along a random walk, random logits (with ties) at each.
            let mut s = c.start();
            let mut left = 60;
            while !c.is_complete(&s) {
                let allowed = c.allowed(&s, left);
                let logits: Vec<f32> = (0..n).map(|_| (rng.below(7) as f32) - 3.0).collect();
                let mut masked = logits.clone();
                c.mask(&mut masked, &allowed);
                let want = crate::backend::select_row(&masked, 0, 0.0, 0);
                let got = c.argmax(&logits, &allowed).unwrap();
                assert_eq!(got, want, "seed {seed}");
                s = c.advance(&s, got).unwrap();
                left -= 1;
            }
        }
    }

    #[test]
    fn the_budget_forces_the_close() {
        let c = JsonConstraint::with_tokens(&strings(5, 20), vocab()).unwrap();
        let s = c.advance(&c.start(), b'[' as u32).unwrap();
        let s = c.advance(&s, b'"' as u32).unwrap();
        // Three tokens left: one content byte, the quote and ']'.
        let allowed = c.allowed_ids(&c.allowed(&s, 3));
        assert!(allowed.contains(&(b'x' as u32)));
        assert!(
            !allowed.contains(&(b'"' as u32)),
            "a string needs one byte first"
        );
        let s = c.advance(&s, b'x' as u32).unwrap();
        // Two tokens left: only tokens that close the string (`"`, `"]`, or `["`: a bracket of content, then
        // the quote) keep the close possible.
        let allowed = c.allowed_ids(&c.allowed(&s, 2));
        assert!(allowed.contains(&(b'"' as u32)));
        assert!(allowed
            .iter()
            .all(|&t| c.tokens[t as usize].as_deref().unwrap().contains(&b'"')));
        assert!(!allowed.contains(&(b'y' as u32)));
    }

    #[test]
    fn bad_shapes_and_vocabularies_are_refused() {
        let bad = JsonShape::Array {
            item: Box::new(JsonShape::String { max_bytes: 3 }),
            min_items: 3,
            max_items: 2,
        };
        assert!(matches!(
            JsonConstraint::with_tokens(&bad, vocab()),
            Err(ConstraintError::Shape(_))
        ));
        let key = JsonShape::Object(vec![("a\"b".into(), JsonShape::String { max_bytes: 3 })]);
        assert!(JsonConstraint::with_tokens(&key, vocab()).is_err());
        let letters: Vec<Option<Vec<u8>>> = (b'a'..=b'z').map(|b| Some(vec![b])).collect();
        assert_eq!(
            JsonConstraint::with_tokens(&strings(2, 2), letters).unwrap_err(),
            ConstraintError::Vocabulary('"')
        );
    }

    #[test]
    fn byte_level_token_bytes_of_the_synthetic_tokenizer() {
        let tok = crate::model::synthetic::synthetic_tokenizer(300);
        let bytes = token_bytes(&tok);
        assert_eq!(bytes[b'a' as usize].as_deref(), Some(&b"a"[..]));
        assert_eq!(bytes[b' ' as usize].as_deref(), Some(&b" "[..]));
        assert_eq!(bytes[0xC3].as_deref(), Some(&[0xC3u8][..]));
        assert!(
            bytes[256..].iter().all(Option::is_none),
            "specials are never emitted"
        );
        let c = JsonConstraint::new(&triples_shape(), &tok).unwrap();
        assert!(c.min_tokens() > 0);
    }
}
