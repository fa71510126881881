//! The extractive reader: splits the retrieved passages into sentences, scores each sentence by the question
//! terms it contains (each distinct term once, weighted by how rare it is among the retrieved sentences, divided
//! by the square root of the sentence's length in terms) and answers with the best one. Its coalition game for
//! attribution: a set of passages is worth the best sentence score found in it (0 for none), so the passage
//! holding the answer, and passages with nearly as good sentences, share the credit.

use crate::attribution::{Coalition, Game};

/// Words that carry no evidence on their own.
const STOPWORDS: &[&str] = &[
    "a", "about", "after", "also", "an", "and", "are", "as", "at", "be", "been", "before", "but",
    "by", "did", "do", "does", "for", "from", "had", "has", "have", "he", "her", "his", "how",
    "in", "into", "is", "it", "its", "many", "much", "of", "on", "or", "she", "that", "the",
    "their", "them", "then", "there", "they", "this", "to", "was", "were", "what", "when", "where",
    "which", "who", "whom", "whose", "why", "will", "with",
];

/// A sentence of a passage: byte offsets `start..end` in the passage text.
#[derive(Debug, Clone, PartialEq)]
pub struct Sentence {
    /// Index of the passage in the reader's input.
    pub passage: usize,
    /// Start byte offset in the passage text.
    pub start: usize,
    /// End byte offset in the passage text.
    pub end: usize,
    /// Match score against the question.
    pub score: f64,
}

/// The extractive answer and every scored sentence.
#[derive(Debug, Clone)]
pub struct Reading {
    /// The best sentence (`None` when no sentence shares a term with the question).
    pub best: Option<Sentence>,
    /// All sentences, in passage order.
    pub sentences: Vec<Sentence>,
}

/// Lower-cased word terms of `text` (letters and digits), without stopwords and one-letter words.
pub fn terms(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| w.chars().count() > 1)
        .map(str::to_lowercase)
        .filter(|w| !STOPWORDS.contains(&w.as_str()))
        .collect()
}

/// Byte ranges of the sentences of `text`: split after `.`, `!` or `?` followed by whitespace; whitespace
/// around each sentence is left out; empty pieces are dropped.
pub fn sentence_spans(text: &str) -> Vec<(usize, usize)> {
    let mut spans = Vec::new();
    let mut start = 0;
    let bytes = text.as_bytes();
    for (i, c) in text.char_indices() {
        let end_of_sentence = matches!(c, '.' | '!' | '?')
            && bytes.get(i + 1).is_none_or(|b| b.is_ascii_whitespace());
        if end_of_sentence {
            spans.push((start, i + 1));
            start = i + 1;
        }
    }
    spans.push((start, text.len()));
    spans
        .into_iter()
        .filter_map(|(s, e)| {
            let piece = &text[s..e];
            let lead = piece.len() - piece.trim_start().len();
            let trail = piece.len() - piece.trim_end().len();
            (lead + trail < piece.len()).then_some((s + lead, e - trail))
        })
        .collect()
}

/// Reads `passages` (texts) for `question`.
pub fn read(question: &str, passages: &[&str]) -> Reading {
    let q: Vec<String> = {
        let mut t = terms(question);
        t.sort();
        t.dedup();
        t
    };
    let mut raw: Vec<(usize, usize, usize, Vec<String>)> = Vec::new();
    for (p, text) in passages.iter().enumerate() {
        for (s, e) in sentence_spans(text) {
            raw.push((p, s, e, terms(&text[s..e])));
        }
    }
    // Rarer question terms weigh more: idf over the retrieved sentences.
    let n = raw.len().max(1) as f64;
    let weight: Vec<f64> = q
        .iter()
        .map(|t| {
            let df = raw.iter().filter(|r| r.3.contains(t)).count() as f64;
            (1.0 + n / (1.0 + df)).ln()
        })
        .collect();
    let sentences: Vec<Sentence> = raw
        .into_iter()
        .map(|(passage, start, end, words)| {
            let matched: f64 = q
                .iter()
                .zip(&weight)
                .filter(|(t, _)| words.contains(t))
                .map(|(_, w)| w)
                .sum();
            Sentence {
                passage,
                start,
                end,
                score: matched / (words.len().max(1) as f64).sqrt(),
            }
        })
        .collect();
    let best = sentences
        .iter()
        .filter(|s| s.score > 0.0)
        .max_by(|a, b| a.score.total_cmp(&b.score).then(b.passage.cmp(&a.passage)))
        .cloned();
    Reading { best, sentences }
}

/// The reader's coalition game over the passages of a [`Reading`]: `v(S)` = the best sentence score in `S`.
pub struct ReaderGame<'a> {
    /// Number of passages.
    pub passages: usize,
    /// The reading whose sentences value the coalitions.
    pub reading: &'a Reading,
}

impl Game for ReaderGame<'_> {
    fn players(&self) -> usize {
        self.passages
    }

    fn values(&mut self, coalitions: &[Coalition]) -> Result<Vec<f64>, String> {
        Ok(coalitions
            .iter()
            .map(|&c| {
                self.reading
                    .sentences
                    .iter()
                    .filter(|s| c & (1 << s.passage) != 0)
                    .map(|s| s.score)
                    .fold(0.0, f64::max)
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attribution::exact_shapley;

    #[test]
    fn sentences_split_on_terminators_and_keep_offsets() {
        let text = "  Ida was born in 1842. She moved to Marrowick!  Why? 3.5 km away";
        let spans = sentence_spans(text);
        let got: Vec<&str> = spans.iter().map(|&(s, e)| &text[s..e]).collect();
        assert_eq!(
            got,
            [
                "Ida was born in 1842.",
                "She moved to Marrowick!",
                "Why?",
                "3.5 km away"
            ]
        );
        assert!(sentence_spans("   ").is_empty());
    }

    #[test]
    fn terms_drop_stopwords_and_case() {
        assert_eq!(
            terms("Where was the Clockmaker born, in 1842?"),
            ["clockmaker", "born", "1842"]
        );
    }

    #[test]
    fn the_best_matching_sentence_answers_and_gets_the_credit() {
        let passages = [
            "Ostrellin is a port. The river widens there.",
            "Ida Fernsworth was a clockmaker. She was born in Fenhallow in 1842.",
            "Fenhallow is a market town. It is known for cheese.",
        ];
        let r = read("Where was Ida Fernsworth born?", &passages);
        let best = r.best.clone().unwrap();
        assert_eq!(best.passage, 1);
        assert_eq!(
            &passages[1][best.start..best.end],
            "Ida Fernsworth was a clockmaker."
        );
        let mut game = ReaderGame {
            passages: 3,
            reading: &r,
        };
        let a = exact_shapley(&mut game).unwrap();
        assert!((a.values.iter().sum::<f64>() - a.full).abs() < 1e-12);
        assert_eq!(a.empty, 0.0);
        assert!(
            a.values[1] > a.values[0] && a.values[1] > a.values[2],
            "{:?}",
            a.values
        );
    }

    #[test]
    fn no_shared_term_means_no_answer() {
        let r = read("zebra?", &["Nothing here matches."]);
        assert!(r.best.is_none());
    }
}
