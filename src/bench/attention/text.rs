//! The accuracy part's inputs and measures, free of any model: a seeded generator, the passkey prompt (filler
//! sentences of our own around one key sentence, at a chosen depth, to a token budget), varied filler for the KL
//! document, and the KL divergence of two next-token distributions.

use std::ops::Range;

use engram_engine::{ChatMessage, ModelTokenizer};

/// A small seeded generator (splitmix64): the keys and the varied filler, the same for a seed on every machine.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// A five-digit pass key, `10000..=99999`.
    pub fn pass_key(&mut self) -> u32 {
        10_000 + self.below(90_000) as u32
    }
}

/// The neutral sentences the passkey filler repeats (written for this benchmark).
pub const FILLER: [&str; 6] = [
    "The morning light moved slowly across the quiet valley.",
    "A small boat drifted along the river past the old stone bridge.",
    "Clouds gathered over the hills and the air grew cool.",
    "The market opened early and the streets filled with people.",
    "Someone in the garden was humming a simple tune.",
    "The library kept its windows open during the warm afternoon.",
];

/// What the prompt says before the filler.
const INSTRUCTION: &str =
    "Below is a long text. Somewhere inside it is a pass key. Find it and remember it: \
                           you will be asked for it at the end.\n\n";

/// The question after the filler.
pub const QUESTION: &str = "What is the pass key?";

/// Marks the filler's place while the chat template is rendered.
const MARK: &str = "\u{1}";

/// The sentence that hides the key.
pub fn key_sentence(key: u32) -> String {
    format!("The pass key is {key}. Remember it. {key} is the pass key.")
}

/// A passkey prompt in tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasskeyPrompt {
    /// The whole prompt.
    pub tokens: Vec<u32>,
    /// Where the filler (with the key sentence) lies in `tokens`.
    pub haystack: Range<usize>,
    /// Where the key sentence lies in `tokens`.
    pub key: Range<usize>,
}

impl PasskeyPrompt {
    /// The filler before the key sentence as a share of all the filler (0: the key comes first, 1: last).
    pub fn depth(&self) -> f64 {
        let filler = self.haystack.len() - self.key.len();
        (self.key.start - self.haystack.start) as f64 / filler.max(1) as f64
    }
}

/// A prompt of about `length` tokens: `before`, then whole `sentences` (cycling) with `key` inserted at the
/// sentence boundary nearest `depth` of the filler, then `after`. The filler takes whole sentences while they fit,
/// so the prompt is at most `length` tokens and short of it by less than the longest sentence (unless `before`,
/// `after` and `key` alone exceed `length`).
pub fn passkey_prompt(
    before: &[u32],
    after: &[u32],
    sentences: &[Vec<u32>],
    key: &[u32],
    length: usize,
    depth: f64,
) -> PasskeyPrompt {
    let budget = length.saturating_sub(before.len() + after.len() + key.len());
    let mut filler: Vec<&[u32]> = Vec::new();
    let mut filled = 0;
    if sentences.iter().all(|s| !s.is_empty()) {
        for s in sentences.iter().cycle() {
            if filled + s.len() > budget {
                break;
            }
            filled += s.len();
            filler.push(s);
        }
    }
    // The boundary (index into `filler`) whose token offset is nearest the asked depth.
    let target = depth.clamp(0.0, 1.0) * filled as f64;
    let mut offset = 0;
    let (mut at, mut at_offset) = (0, 0);
    for i in 0..=filler.len() {
        if (offset as f64 - target).abs() < (at_offset as f64 - target).abs() {
            (at, at_offset) = (i, offset);
        }
        if let Some(s) = filler.get(i) {
            offset += s.len();
        }
    }
    let mut tokens = before.to_vec();
    for s in &filler[..at] {
        tokens.extend_from_slice(s);
    }
    let key_span = tokens.len()..tokens.len() + key.len();
    tokens.extend_from_slice(key);
    for s in &filler[at..] {
        tokens.extend_from_slice(s);
    }
    let haystack = before.len()..tokens.len();
    tokens.extend_from_slice(after);
    PasskeyPrompt {
        tokens,
        haystack,
        key: key_span,
    }
}

/// The token pieces of the passkey prompts for one tokenizer: the chat template's text before and after the
/// filler (instruction first, question last), and each filler sentence.
#[derive(Debug, Clone)]
pub struct PasskeyParts {
    /// Template and instruction, before the filler.
    pub before: Vec<u32>,
    /// Question and the template's assistant header, after the filler.
    pub after: Vec<u32>,
    /// The filler sentences, each with its leading space.
    pub sentences: Vec<Vec<u32>>,
}

impl PasskeyParts {
    /// The pieces through the model's chat template (or as plain text, with the tokenizer's special tokens, when
    /// it has none). Each piece is tokenised on its own, as running text continues it.
    pub fn new(tokenizer: &ModelTokenizer) -> Result<Self, String> {
        let user = format!("{INSTRUCTION}{MARK}\n\n{QUESTION}");
        let messages = [ChatMessage::new("user", user.clone())];
        let (text, plain) = match tokenizer.apply_chat_template(&messages, true) {
            Ok(text) => (text, false),
            Err(_) => (user, true),
        };
        let (before, after) = text
            .split_once(MARK)
            .ok_or("the chat template dropped the filler's place")?;
        let encode =
            |s: &str, special: bool| tokenizer.encode(s, special).map_err(|e| e.to_string());
        Ok(Self {
            before: encode(before, plain)?,
            after: encode(after, false)?,
            sentences: FILLER
                .iter()
                .map(|s| encode(&format!(" {s}"), false))
                .collect::<Result<_, _>>()?,
        })
    }

    /// The prompt of about `length` tokens hiding `key` at `depth` ([`passkey_prompt`]).
    pub fn prompt(
        &self,
        tokenizer: &ModelTokenizer,
        key: u32,
        length: usize,
        depth: f64,
    ) -> Result<PasskeyPrompt, String> {
        let key_ids = tokenizer
            .encode(&format!(" {}", key_sentence(key)), false)
            .map_err(|e| e.to_string())?;
        Ok(passkey_prompt(
            &self.before,
            &self.after,
            &self.sentences,
            &key_ids,
            length,
            depth,
        ))
    }
}

/// Whether an answer names the key (its five digits appear in it).
pub fn answer_is_correct(answer: &str, key: u32) -> bool {
    answer.contains(&key.to_string())
}

/// One varied filler sentence (for the KL document): words drawn from small lists.
pub fn varied_sentence(rng: &mut Rng) -> String {
    const WHO: [&str; 8] = [
        "The baker",
        "A traveller",
        "The old teacher",
        "My neighbour",
        "A young painter",
        "The ferryman",
        "Her cousin",
        "The night guard",
    ];
    const DID: [&str; 8] = [
        "carried",
        "repaired",
        "painted",
        "found",
        "sold",
        "described",
        "forgot",
        "counted",
    ];
    const WHAT: [&str; 8] = [
        "a wooden chair",
        "three blue lanterns",
        "the broken clock",
        "a basket of apples",
        "an old map",
        "the letters from the coast",
        "a pair of boots",
        "the garden gate",
    ];
    const WHERE: [&str; 8] = [
        "near the harbour",
        "in the village square",
        "behind the mill",
        "at the edge of the forest",
        "on the hill road",
        "by the river",
        "inside the station",
        "under the bridge",
    ];
    const WHEN: [&str; 6] = [
        "before dawn",
        "on a rainy Tuesday",
        "after the long winter",
        "late in the evening",
        "during the festival",
        "at noon",
    ];
    format!(
        "{} {} {} {} {}.",
        WHO[rng.below(WHO.len())],
        DID[rng.below(DID.len())],
        WHAT[rng.below(WHAT.len())],
        WHERE[rng.below(WHERE.len())],
        WHEN[rng.below(WHEN.len())]
    )
}

/// A document of exactly `length` tokens: `source` (or, when empty, varied sentences from `seed`) repeated as
/// needed, tokenised as one text with the tokenizer's special tokens, cut to `length`.
pub fn document_tokens(
    tokenizer: &ModelTokenizer,
    source: &str,
    length: usize,
    seed: u64,
) -> Result<Vec<u32>, String> {
    let mut rng = Rng::new(seed);
    let mut text = String::new();
    // Characters per token are near 4 for English; grow the text until it is long enough.
    let mut want_chars = length * 5 + 64;
    loop {
        while text.len() < want_chars {
            if source.trim().is_empty() {
                text.push_str(&varied_sentence(&mut rng));
                text.push(' ');
            } else {
                text.push_str(source);
                text.push_str("\n\n");
            }
        }
        let ids = tokenizer.encode(&text, true).map_err(|e| e.to_string())?;
        if ids.len() >= length {
            return Ok(ids[..length].to_vec());
        }
        want_chars = text.len() * 2;
    }
}

/// `log softmax` of a row of logits.
pub fn log_softmax(row: &[f32]) -> Vec<f32> {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let lse = max as f64
        + row
            .iter()
            .map(|&x| ((x - max) as f64).exp())
            .sum::<f64>()
            .ln();
    row.iter().map(|&x| (x as f64 - lse) as f32).collect()
}

/// KL(p ‖ q) in nats from log-probabilities, in f64 (never below 0).
pub fn kl(log_p: &[f32], log_q: &[f32]) -> f64 {
    log_p
        .iter()
        .zip(log_q)
        .map(|(&a, &b)| (a as f64).exp() * (a as f64 - b as f64))
        .sum::<f64>()
        .max(0.0)
}

/// The index of the largest value (the first of equals).
pub fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use engram_engine::internals::model::synthetic::synthetic_tokenizer;

    #[test]
    fn the_key_sits_at_the_asked_depth_and_the_prompt_has_the_asked_length() {
        let before: Vec<u32> = (0..20).collect();
        let after: Vec<u32> = (900..910).collect();
        let sentences: Vec<Vec<u32>> = (0..5)
            .map(|i| (0..(9 + i)).map(|j| 100 + 20 * i + j).collect())
            .collect();
        let key: Vec<u32> = (500..516).collect();
        let longest = 13;
        for length in [200, 1000, 4096] {
            for depth in [0.0, 0.1, 0.5, 0.9, 1.0] {
                let p = passkey_prompt(&before, &after, &sentences, &key, length, depth);
                assert!(p.tokens.len() <= length && p.tokens.len() + longest > length);
                assert_eq!(&p.tokens[p.key.clone()], &key[..]);
                assert_eq!(&p.tokens[..20], &before[..]);
                assert_eq!(&p.tokens[p.tokens.len() - 10..], &after[..]);
                let tolerance = longest as f64 / (p.haystack.len() - key.len()) as f64;
                assert!((p.depth() - depth).abs() <= tolerance, "{length} {depth}");
            }
        }
        // Too short for any filler: the key still comes between the pieces.
        let p = passkey_prompt(&before, &after, &sentences, &key, 10, 0.5);
        assert_eq!(p.key, 20..36);
        assert_eq!(p.tokens.len(), 46);
    }

    #[test]
    fn passkey_prompts_through_a_chat_template_hold_the_key_and_the_question() {
        let tokenizer = synthetic_tokenizer(512);
        let parts = PasskeyParts::new(&tokenizer).unwrap();
        let mut rng = Rng::new(7);
        let key = rng.pass_key();
        assert!((10_000..=99_999).contains(&key));
        for depth in [0.1, 0.5, 0.9] {
            let p = parts.prompt(&tokenizer, key, 3000, depth).unwrap();
            assert!(p.tokens.len() <= 3000 && p.tokens.len() > 2900);
            assert!((p.depth() - depth).abs() < 0.03, "{}", p.depth());
            let text = tokenizer.decode(&p.tokens, false).unwrap();
            assert!(text.starts_with("<|im_start|>user\nBelow is a long text."));
            assert!(text.ends_with("What is the pass key?<|im_end|>\n<|im_start|>assistant\n"));
            let hidden = tokenizer.decode(&p.tokens[p.key.clone()], false).unwrap();
            assert!(hidden.starts_with(&format!(" The pass key is {key}.")));
        }
        assert!(answer_is_correct("The pass key is 12345.", 12345));
        assert!(!answer_is_correct("1234", 12345));
    }

    #[test]
    fn documents_have_the_asked_length_and_vary() {
        let tokenizer = synthetic_tokenizer(512);
        let doc = document_tokens(&tokenizer, "", 2000, 3).unwrap();
        assert_eq!(doc.len(), 2000);
        assert_ne!(doc, document_tokens(&tokenizer, "", 2000, 4).unwrap());
        let given = document_tokens(&tokenizer, "Short text.", 100, 3).unwrap();
        assert_eq!(given.len(), 100);
        let text = tokenizer.decode(&given, false).unwrap();
        assert!(text.contains("Short text.\n\nShort text."), "{text}");
    }

    #[test]
    fn kl_is_zero_for_identical_distributions_and_positive_otherwise() {
        let p = log_softmax(&[1.0, 2.0, 3.0, -1.0]);
        let q = log_softmax(&[3.0, 2.0, 1.0, 0.0]);
        assert!(kl(&p, &p).abs() < 1e-12);
        assert!(kl(&p, &q) > 0.1);
        let total: f64 = p.iter().map(|&x| (x as f64).exp()).sum();
        assert!((total - 1.0).abs() < 1e-6);
        assert_eq!(argmax(&[0.0, 2.0, 2.0, 1.0]), 1);
    }

    #[test]
    fn the_generator_is_seeded() {
        let draw = |seed| {
            let mut r = Rng::new(seed);
            (0..4).map(|_| r.pass_key()).collect::<Vec<_>>()
        };
        assert_eq!(draw(1), draw(1));
        assert_ne!(draw(1), draw(2));
    }
}
