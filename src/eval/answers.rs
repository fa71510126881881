//! Answer metrics as SQuAD computes them: both strings normalised (lower case, punctuation and the articles
//! a/an/the removed, whitespace collapsed), exact match, and the F1 of their word multisets; a prediction scores
//! the best over the accepted answers (the answer and its aliases).

use std::collections::HashMap;

/// SQuAD normalisation.
pub fn normalize_answer(s: &str) -> String {
    let lower = s.to_lowercase();
    let no_punct: String = lower
        .chars()
        .filter(|c| !c.is_ascii_punctuation())
        .collect();
    no_punct
        .split_whitespace()
        .filter(|w| !matches!(*w, "a" | "an" | "the"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// 1 when the normalised strings are equal, else 0.
pub fn exact_match(prediction: &str, truth: &str) -> f64 {
    f64::from(u8::from(
        normalize_answer(prediction) == normalize_answer(truth),
    ))
}

/// F1 of the normalised words (as multisets).
pub fn f1(prediction: &str, truth: &str) -> f64 {
    let p = normalize_answer(prediction);
    let t = normalize_answer(truth);
    let (pw, tw): (Vec<&str>, Vec<&str>) = (p.split(' ').collect(), t.split(' ').collect());
    if p.is_empty() || t.is_empty() {
        return f64::from(u8::from(p == t));
    }
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for w in &tw {
        *counts.entry(w).or_default() += 1;
    }
    let mut common = 0usize;
    for w in &pw {
        if let Some(c) = counts.get_mut(w) {
            if *c > 0 {
                *c -= 1;
                common += 1;
            }
        }
    }
    if common == 0 {
        return 0.0;
    }
    let precision = common as f64 / pw.len() as f64;
    let recall = common as f64 / tw.len() as f64;
    2.0 * precision * recall / (precision + recall)
}

/// (exact match, F1), each the best over `answers` (0 when there are none).
pub fn best_scores(prediction: &str, answers: &[String]) -> (f64, f64) {
    answers.iter().fold((0.0, 0.0), |(em, f), a| {
        (em.max(exact_match(prediction, a)), f.max(f1(prediction, a)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalisation_drops_case_punctuation_and_articles() {
        assert_eq!(normalize_answer("The  Eiffel Tower!"), "eiffel tower");
        assert_eq!(normalize_answer("an apple, a pear"), "apple pear");
    }

    #[test]
    fn metrics_match_squad_examples() {
        assert_eq!(exact_match("the Eiffel tower", "Eiffel Tower."), 1.0);
        assert_eq!(exact_match("Eiffel", "Eiffel Tower"), 0.0);
        // 1 common word of 1 predicted and 2 true: precision 1, recall 1/2.
        assert!((f1("Eiffel", "Eiffel Tower") - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(f1("Paris", "Eiffel Tower"), 0.0);
        assert_eq!(f1("", ""), 1.0);
        // Repeated words count as often as they appear in both.
        assert!((f1("x b b", "b b c") - 2.0 / 3.0).abs() < 1e-12);
        // Articles are not words: "a b b" is "b b".
        assert!((f1("a b b", "b b c") - 0.8).abs() < 1e-12);
    }

    #[test]
    fn the_best_alias_counts() {
        let answers = vec!["United Kingdom".to_string(), "UK".to_string()];
        assert_eq!(best_scores("the UK", &answers), (1.0, 1.0));
        let (em, f) = best_scores("kingdom of fife", &answers);
        assert_eq!(em, 0.0);
        assert!(f > 0.0 && f < 1.0);
        assert_eq!(best_scores("x", &[]), (0.0, 0.0));
    }
}
