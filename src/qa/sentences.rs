//! Sentence-level sources, ContextCite's granularity (`attribution: "sentences"`): the players are the sentences of
//! the retrieved passages, so a highlight can point at the very sentence an answer rests on. A coalition's prompt
//! holds each passage reduced to its kept sentences (a passage with none is left out, as in the passage game);
//! with passages encoded once, each sentence is a segment of its own, labelled with its passage's number and
//! title. More than [`MAX_SENTENCES`] sentences are grouped into runs of consecutive sentences of one passage.

use crate::attribution::{Coalition, Game, SeparatePrompt, MAX_PLAYERS};
use crate::qa::extractive::{read, sentence_spans};

/// Most sentence players (coalitions are 64-bit sets).
pub const MAX_SENTENCES: usize = MAX_PLAYERS;

/// One player: a run of sentences (usually one) of one passage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SentencePlayer {
    /// The passage's index, in rank order.
    pub passage: usize,
    /// First byte of the run in the passage text.
    pub start_byte: usize,
    /// One past its last byte.
    pub end_byte: usize,
}

/// The sentence players of `texts` (each passage's text, in rank order): every sentence while there are at most
/// `max` in all, else each passage's sentences grouped into runs, a passage getting runs in proportion to its
/// sentences (at least one). `None` when there are more passages with text than `max`.
pub fn sentence_players(texts: &[&str], max: usize) -> Option<Vec<SentencePlayer>> {
    let spans: Vec<Vec<(usize, usize)>> = texts.iter().map(|t| sentence_spans(t)).collect();
    let total: usize = spans.iter().map(Vec::len).sum();
    let with_text = spans.iter().filter(|s| !s.is_empty()).count();
    if with_text > max {
        return None;
    }
    let mut quotas: Vec<usize> = spans.iter().map(Vec::len).collect();
    if total > max {
        // Proportional quotas rounded down (at least one each), then the spare places to the largest passages.
        let spare = max - with_text;
        let extra_total = total - with_text;
        quotas = spans
            .iter()
            .map(|s| match s.len() {
                0 => 0,
                n => 1 + (n - 1) * spare / extra_total,
            })
            .collect();
        let mut left = max - quotas.iter().sum::<usize>();
        let mut order: Vec<usize> = (0..spans.len()).collect();
        order.sort_by_key(|&p| std::cmp::Reverse(spans[p].len()));
        for &p in order.iter().cycle().take(order.len() * 2) {
            if left == 0 {
                break;
            }
            if quotas[p] < spans[p].len() {
                quotas[p] += 1;
                left -= 1;
            }
        }
    }
    let mut out = Vec::new();
    for (passage, (s, &quota)) in spans.iter().zip(&quotas).enumerate() {
        if quota == 0 {
            continue;
        }
        let (per, extra) = (s.len() / quota, s.len() % quota);
        let mut next = 0;
        for r in 0..quota {
            let count = per + usize::from(r < extra);
            out.push(SentencePlayer {
                passage,
                start_byte: s[next].0,
                end_byte: s[next + count - 1].1,
            });
            next += count;
        }
    }
    Some(out)
}

/// The passages as a coalition of `players` leaves them: each passage's kept runs joined by a space, and the
/// passage coalition of those with at least one kept run.
pub fn kept_passages(
    passages: &[(String, String)],
    players: &[SentencePlayer],
    coalition: Coalition,
) -> (Vec<(String, String)>, Coalition) {
    let mut kept: Vec<Vec<&str>> = vec![Vec::new(); passages.len()];
    for (i, p) in players.iter().enumerate() {
        if coalition & (1 << i) != 0 {
            kept[p.passage].push(&passages[p.passage].1[p.start_byte..p.end_byte]);
        }
    }
    let mut with = 0u64;
    let reduced = passages
        .iter()
        .zip(&kept)
        .enumerate()
        .map(|(i, ((title, _), runs))| {
            if !runs.is_empty() {
                with |= 1 << i;
            }
            (title.clone(), runs.join(" "))
        })
        .collect();
    (reduced, with)
}

/// `prompt` (the passage-level separate prompt) with one segment per sentence player: `[n] Title: sentence`,
/// tokenised by `encode`.
pub fn sentence_segments(
    prompt: SeparatePrompt,
    passages: &[(String, String)],
    players: &[SentencePlayer],
    encode: impl Fn(&str) -> Result<Vec<u32>, String>,
) -> Result<SeparatePrompt, String> {
    let passages_tokens = players
        .iter()
        .map(|p| {
            let (title, text) = &passages[p.passage];
            let sentence = &text[p.start_byte..p.end_byte];
            encode(&format!("[{}] {title}: {sentence}\n", p.passage + 1))
        })
        .collect::<Result<_, _>>()?;
    Ok(SeparatePrompt {
        passages: passages_tokens,
        ..prompt
    })
}

/// The extractive reader's game over sentence players: `v(S)` = the best sentence score of the passages reduced
/// to the sentences in `S` (0 when none matches).
pub struct ReaderSentenceGame<'a> {
    /// The question.
    pub question: &'a str,
    /// Every retrieved passage's text, in order.
    pub texts: Vec<&'a str>,
    /// The players.
    pub players: &'a [SentencePlayer],
}

impl Game for ReaderSentenceGame<'_> {
    fn players(&self) -> usize {
        self.players.len()
    }

    fn values(&mut self, coalitions: &[Coalition]) -> Result<Vec<f64>, String> {
        Ok(coalitions
            .iter()
            .map(|&c| {
                let mut kept: Vec<Vec<&str>> = vec![Vec::new(); self.texts.len()];
                for (i, p) in self.players.iter().enumerate() {
                    if c & (1 << i) != 0 {
                        kept[p.passage].push(&self.texts[p.passage][p.start_byte..p.end_byte]);
                    }
                }
                let joined: Vec<String> = kept.iter().map(|k| k.join(" ")).collect();
                let texts: Vec<&str> = joined.iter().map(String::as_str).collect();
                read(self.question, &texts).best.map_or(0.0, |s| s.score)
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_sentence_is_a_player_while_they_fit() {
        let texts = ["One. Two! Three?", "", "Four is here. Five"];
        let players = sentence_players(&texts, 64).unwrap();
        let got: Vec<(usize, &str)> = players
            .iter()
            .map(|p| (p.passage, &texts[p.passage][p.start_byte..p.end_byte]))
            .collect();
        assert_eq!(
            got,
            vec![
                (0, "One."),
                (0, "Two!"),
                (0, "Three?"),
                (2, "Four is here."),
                (2, "Five")
            ]
        );
    }

    #[test]
    fn too_many_sentences_are_grouped_per_passage_within_the_limit() {
        let long = "A. ".repeat(30);
        let texts = [long.as_str(), "B. C.", "D."];
        let players = sentence_players(&texts, 8).unwrap();
        assert_eq!(players.len(), 8);
        // Each passage keeps at least one run, runs stay inside their passage and cover it in order.
        for (p, text) in texts.iter().enumerate() {
            let runs: Vec<_> = players.iter().filter(|s| s.passage == p).collect();
            assert!(!runs.is_empty());
            assert_eq!(runs[0].start_byte, 0);
            assert_eq!(runs.last().unwrap().end_byte, text.trim_end().len());
        }
        assert_eq!(players.iter().filter(|s| s.passage == 0).count(), 6);
        assert!(sentence_players(&["a.", "b.", "c."], 2).is_none());
    }

    #[test]
    fn a_coalition_keeps_its_sentences_and_drops_empty_passages() {
        let passages = vec![
            ("T1".to_string(), "One. Two. Three.".to_string()),
            ("T2".to_string(), "Four.".to_string()),
        ];
        let texts: Vec<&str> = passages.iter().map(|p| p.1.as_str()).collect();
        let players = sentence_players(&texts, 64).unwrap();
        let (reduced, with) = kept_passages(&passages, &players, 0b0101);
        assert_eq!(reduced[0].1, "One. Three.");
        assert_eq!(reduced[1].1, "");
        assert_eq!(with, 0b01);
        let prompt = SeparatePrompt {
            prefix: vec![1],
            passages: vec![vec![9], vec![9]],
            suffix: vec![2],
        };
        let seg =
            sentence_segments(prompt, &passages, &players, |s| Ok(vec![s.len() as u32])).unwrap();
        assert_eq!(seg.passages.len(), 4);
        assert_eq!(seg.passages[3], vec!["[2] T2: Four.\n".len() as u32]);
        assert_eq!((seg.prefix, seg.suffix), (vec![1], vec![2]));
    }
}
