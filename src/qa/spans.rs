//! Token-level attribution, TextGenSHAP's second level: once the passages have values, the words of the most
//! valuable passage become the players, grouped into at most [`SPAN_PLAYERS`] runs of consecutive words so the
//! values stay exact (2^8 coalitions). A coalition keeps only its runs of that passage; every other passage stays
//! whole, so the values say which words of the passage the answer rests on.

use crate::attribution::{Coalition, Game};
use crate::qa::extractive::read;

/// Most runs of words (players) in a token-level attribution.
pub const SPAN_PLAYERS: usize = 8;

/// Byte ranges of at most `max` runs of consecutive whitespace-separated words of `text`, covering every word,
/// with word counts as equal as they can be (earlier runs take the extra words). Empty for a text without words.
pub fn word_runs(text: &str, max: usize) -> Vec<(usize, usize)> {
    let mut words = Vec::new();
    let mut start = None;
    for (i, c) in text.char_indices() {
        match (c.is_whitespace(), start) {
            (true, Some(s)) => {
                words.push((s, i));
                start = None;
            }
            (false, None) => start = Some(i),
            _ => {}
        }
    }
    if let Some(s) = start {
        words.push((s, text.len()));
    }
    let runs = words.len().min(max.max(1));
    if runs == 0 {
        return Vec::new();
    }
    let (per, extra) = (words.len() / runs, words.len() % runs);
    let mut out = Vec::with_capacity(runs);
    let mut next = 0;
    for r in 0..runs {
        let count = per + usize::from(r < extra);
        out.push((words[next].0, words[next + count - 1].1));
        next += count;
    }
    out
}

/// `text` with only the runs in `coalition` (bit `i`: run `i`), joined by single spaces.
pub fn keep_runs(text: &str, runs: &[(usize, usize)], coalition: Coalition) -> String {
    runs.iter()
        .enumerate()
        .filter(|(i, _)| coalition & (1 << i) != 0)
        .map(|(_, &(a, b))| &text[a..b])
        .collect::<Vec<_>>()
        .join(" ")
}

/// The passage with the largest value (the first of equals); `None` without passages.
pub fn top_passage(values: &[f64]) -> Option<usize> {
    values
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1).then(b.0.cmp(&a.0)))
        .map(|(i, _)| i)
}

/// The extractive reader's game over the runs of one passage: `v(S)` = the best sentence score over all the
/// passages, that one reduced to the runs in `S` (0 when no sentence matches).
pub struct ReaderRunGame<'a> {
    /// The question.
    pub question: &'a str,
    /// Every retrieved passage's text, in order.
    pub texts: Vec<&'a str>,
    /// The passage whose runs are the players.
    pub passage: usize,
    /// Its runs (byte ranges).
    pub runs: Vec<(usize, usize)>,
}

impl Game for ReaderRunGame<'_> {
    fn players(&self) -> usize {
        self.runs.len()
    }

    fn values(&mut self, coalitions: &[Coalition]) -> Result<Vec<f64>, String> {
        Ok(coalitions
            .iter()
            .map(|&c| {
                let kept = keep_runs(self.texts[self.passage], &self.runs, c);
                let mut texts = self.texts.clone();
                texts[self.passage] = &kept;
                read(self.question, &texts).best.map_or(0.0, |s| s.score)
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attribution::exact_shapley;

    #[test]
    fn runs_cover_every_word_in_order() {
        let text = "  one two\tthree four five  six seven ";
        let runs = word_runs(text, 3);
        let parts: Vec<&str> = runs.iter().map(|&(a, b)| &text[a..b]).collect();
        assert_eq!(parts, ["one two\tthree", "four five", "six seven"]);
        assert_eq!(word_runs(text, 20).len(), 7);
        assert!(word_runs("   ", 8).is_empty());
        assert_eq!(word_runs("é ü", 8), vec![(0, 2), (3, 5)]);
        assert_eq!(keep_runs(text, &runs, 0b101), "one two\tthree six seven");
        assert_eq!(keep_runs(text, &runs, 0), "");
    }

    #[test]
    fn the_top_passage_is_the_first_largest() {
        assert_eq!(top_passage(&[0.1, 0.5, 0.5, -1.0]), Some(1));
        assert_eq!(top_passage(&[]), None);
    }

    #[test]
    fn the_words_matching_the_question_carry_the_reader_value() {
        let texts = vec![
            "Ida Fernsworth founded the Harlow Lamp Company in 1874. It made lamps.",
            "The river is long.",
        ];
        let runs = word_runs(texts[0], 4);
        let mut game = ReaderRunGame {
            question: "Which company did Ida Fernsworth found?",
            texts: texts.clone(),
            passage: 0,
            runs: runs.clone(),
        };
        let a = exact_shapley(&mut game).unwrap();
        // Efficiency: the values share out v(all) - v(none), and the run holding the name is worth the most.
        let total: f64 = a.values.iter().sum();
        assert!((total - (a.full - a.empty)).abs() < 1e-9);
        let best = top_passage(&a.values).unwrap();
        assert!(
            texts[0][runs[best].0..runs[best].1].contains("Fernsworth"),
            "{:?}",
            a.values
        );
        assert!(a.values[best] > 0.0);
    }
}
