//! How close the model-free [`FallbackExtractor`] comes to gpt-3.5-turbo's open-IE extraction on the MuSiQue corpus.
//!
//! ```text
//! cargo run --release --example openie_recall [-- MUSIQUE_DIR [--show N]]
//! ```
//!
//! `MUSIQUE_DIR` defaults to `$ENGRAM_MUSIQUE_DIR`, else `../shared/data/musique`. Entities are compared after
//! [`normalize_phrase`]. Prints entity recall (the fraction of (passage, gold entity) pairs the fallback finds),
//! precision (the fraction of the fallback's (passage, entity) pairs that are gold), entities and triples per
//! passage, the fraction of gold triples whose subject–object pair (in either order) the fallback links, and with
//! `--show N` the N most frequent missed and spurious entities.
#![allow(clippy::disallowed_methods)] // test and benchmark harnesses read their fixtures' locations from the environment

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::Instant;

use engram::openie::fallback::FallbackExtractor;
use engram::openie::import::OpenIeTable;
use engram::openie::{normalize_phrase, Extraction, PassageInput};

#[derive(serde::Deserialize)]
struct Passage {
    title: String,
    text: String,
}

fn keys(entities: &[String]) -> HashSet<String> {
    entities
        .iter()
        .map(|e| normalize_phrase(e))
        .filter(|e| !e.is_empty())
        .collect()
}

fn pairs(x: &Extraction) -> HashSet<(String, String)> {
    x.triples
        .iter()
        .map(|t| {
            let (a, b) = (normalize_phrase(&t.subject), normalize_phrase(&t.object));
            if a <= b {
                (a, b)
            } else {
                (b, a)
            }
        })
        .collect()
}

fn top(counts: HashMap<String, usize>, n: usize) -> Vec<(String, usize)> {
    let mut v: Vec<_> = counts.into_iter().collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    v.truncate(n);
    v
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let show = match args.iter().position(|a| a == "--show") {
        Some(i) => args.get(i + 1).and_then(|n| n.parse().ok()).unwrap_or(20),
        None => 0,
    };
    let dir = args
        .first()
        .filter(|a| !a.starts_with("--"))
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(
                std::env::var("ENGRAM_MUSIQUE_DIR")
                    .unwrap_or_else(|_| "../shared/data/musique".into()),
            )
        });
    let gold = OpenIeTable::load(&dir.join("openie_gpt-3.5-turbo-1106.json"))?;
    let corpus: Vec<Passage> =
        serde_json::from_str(&fs_err::read_to_string(dir.join("corpus.json"))?)?;
    let extractor = FallbackExtractor::default();

    let (mut gold_total, mut found, mut ours_total, mut ours_right) =
        (0usize, 0usize, 0usize, 0usize);
    let (mut gold_pairs, mut pairs_found, mut triples, mut passages) =
        (0usize, 0usize, 0usize, 0usize);
    let (mut missed, mut spurious) = (HashMap::new(), HashMap::new());
    let start = Instant::now();
    for p in &corpus {
        let input = PassageInput {
            title: &p.title,
            text: &p.text,
        };
        let Some(g) = gold.get(&input.key()) else {
            continue;
        };
        let ours = extractor.extract_passage(&input);
        passages += 1;
        triples += ours.triples.len();
        let (gk, ok) = (keys(&g.entities), keys(&ours.entities));
        gold_total += gk.len();
        found += gk.intersection(&ok).count();
        ours_total += ok.len();
        ours_right += ok.intersection(&gk).count();
        for e in gk.difference(&ok) {
            *missed.entry(e.clone()).or_insert(0) += 1;
        }
        for e in ok.difference(&gk) {
            *spurious.entry(e.clone()).or_insert(0) += 1;
        }
        let (gp, op) = (pairs(g), pairs(&ours));
        gold_pairs += gp.len();
        pairs_found += gp.intersection(&op).count();
    }
    let elapsed = start.elapsed();
    let ratio = |a: usize, b: usize| a as f64 / b.max(1) as f64;
    println!(
        "passages compared: {passages} of {} (gold rows: {:?})",
        corpus.len(),
        gold.stats
    );
    println!(
        "entity recall:    {:.4} ({found} of {gold_total} gold (passage, entity) pairs)",
        ratio(found, gold_total)
    );
    println!(
        "entity precision: {:.4} ({ours_right} of {ours_total})",
        ratio(ours_right, ours_total)
    );
    println!(
        "entities/passage: {:.2} (gold {:.2})",
        ratio(ours_total, passages),
        ratio(gold_total, passages)
    );
    println!("triples/passage:  {:.2}", ratio(triples, passages));
    println!(
        "gold triple pairs linked: {:.4} ({pairs_found} of {gold_pairs})",
        ratio(pairs_found, gold_pairs)
    );
    println!(
        "time: {:.1} µs per passage",
        elapsed.as_secs_f64() * 1e6 / passages.max(1) as f64
    );
    if show > 0 {
        println!("most missed: {:?}", top(missed, show));
        println!("most spurious: {:?}", top(spurious, show));
    }
    Ok(())
}
