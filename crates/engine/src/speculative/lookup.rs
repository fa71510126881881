//! Prompt lookup: the guesses are the tokens that followed the most recent earlier occurrence of the context's
//! last n tokens (longest n first). Answers grounded in retrieved passages copy spans from the prompt, so this
//! proposer costs nothing and is often right in retrieval-augmented generation.

/// Up to `k` guesses for what follows `context`: for n from `max_ngram` down to `min_ngram`, the last n tokens
/// are searched for earlier in `context` (latest match first) and the tokens after the match are proposed.
/// Empty when nothing matches.
pub fn prompt_lookup(context: &[u32], k: usize, min_ngram: usize, max_ngram: usize) -> Vec<u32> {
    let len = context.len();
    if k == 0 {
        return Vec::new();
    }
    for n in (min_ngram.max(1)..=max_ngram).rev() {
        if n >= len {
            continue;
        }
        let suffix = &context[len - n..];
        // A match must end before the suffix itself, so at least one token follows it.
        for start in (0..len - n).rev() {
            if &context[start..start + n] == suffix {
                let from = start + n;
                let to = (from + k).min(len);
                return context[from..to].to_vec();
            }
        }
    }
    Vec::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proposes_what_followed_the_latest_longest_match() {
        // "… 1 2 3 9 8 … 1 2 3 7 6 5 … 2 3" : the trigram is not there, the bigram 2 3 last occurred before 7.
        let context = [1, 2, 3, 9, 8, 4, 1, 2, 3, 7, 6, 5, 0, 2, 3];
        assert_eq!(prompt_lookup(&context, 3, 1, 3), vec![7, 6, 5]);
        // k bounds the guesses, and the context's end bounds them too.
        assert_eq!(prompt_lookup(&context, 1, 1, 3), vec![7]);
        let short = [5, 6, 5];
        assert_eq!(prompt_lookup(&short, 4, 1, 3), vec![6, 5]);
    }

    #[test]
    fn longer_matches_win_over_later_shorter_ones() {
        // Trigram 1 2 3 occurred before 4; the bigram 2 3 occurred later before 8.
        let context = [1, 2, 3, 4, 0, 2, 3, 8, 1, 2, 3];
        assert_eq!(prompt_lookup(&context, 2, 1, 3), vec![4, 0]);
        assert_eq!(prompt_lookup(&context, 2, 1, 2), vec![8, 1]);
    }

    #[test]
    fn nothing_matches_nothing_is_proposed() {
        assert!(prompt_lookup(&[1, 2, 3, 4], 4, 1, 3).is_empty());
        assert!(prompt_lookup(&[1, 1], 0, 1, 3).is_empty());
        assert!(prompt_lookup(&[], 4, 1, 3).is_empty());
        // min_ngram 2 ignores single-token matches.
        assert!(prompt_lookup(&[5, 1, 7, 1], 4, 2, 3).is_empty());
        assert_eq!(prompt_lookup(&[5, 1, 7, 1], 4, 1, 3), vec![7, 1]);
    }
}
