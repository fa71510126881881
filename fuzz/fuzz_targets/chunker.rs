//! The chunker on arbitrary text and settings, checked against the promises of `chunk_text`'s documentation.
#![no_main]

use engram_formats::chunker::{chunk_text, ChunkConfig};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&[a, b], rest)) = data.split_first_chunk::<2>().map(|(h, r)| (h, r)) else {
        return;
    };
    let max_chars = ChunkConfig::MIN_MAX_CHARS + a as usize * 4;
    let cfg = ChunkConfig {
        max_chars,
        overlap_chars: (b as usize) % (max_chars / 2),
    };
    cfg.validate().expect("the settings are built valid");
    let text = String::from_utf8_lossy(rest);
    let chunks = chunk_text(&text, &cfg);
    assert_eq!(chunks, chunk_text(&text, &cfg), "deterministic");
    let mut covered = 0; // bytes before this offset that are covered or whitespace
    let mut previous_start = None;
    for c in &chunks {
        assert!(
            c.start < c.end && c.end <= text.len(),
            "{c:?} in {} bytes",
            text.len()
        );
        let passage = &text[c.start..c.end]; // panics off a char boundary
        assert_eq!(passage, passage.trim(), "trimmed");
        assert!(passage.chars().count() <= max_chars, "too long: {c:?}");
        if let Some(p) = previous_start {
            assert!(c.start > p, "in order and advancing");
        }
        previous_start = Some(c.start);
        assert!(
            text[covered..c.start.max(covered)].trim().is_empty(),
            "a gap before {c:?}"
        );
        covered = covered.max(c.end);
    }
    assert!(
        text[covered..].trim().is_empty(),
        "text after the last chunk"
    );
});
