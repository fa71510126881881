//! Open-IE on the MuSiQue corpus: the import of HippoRAG's gpt-3.5-turbo extractions, the recall of the
//! model-free fallback against them, and the precomputed extractor with its fallback.
//!
//! The data lives outside the repository: `$ENGRAM_MUSIQUE_DIR`, else `../shared/data/musique` from the crate
//! root. Each test prints a message and passes when it is absent.
#![allow(clippy::disallowed_methods)] // test and benchmark harnesses read their fixtures' locations from the environment

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;

use engram::openie::fallback::FallbackExtractor;
use engram::openie::import::{OpenIeTable, PrecomputedExtractor};
use engram::openie::{normalize_phrase, Extractor, PassageInput};

const GOLD_FILE: &str = "openie_gpt-3.5-turbo-1106.json";

/// Entity recall of the fallback measured on the corpus (`cargo run --release --example openie_recall`), and the
/// precision alongside; the test fails if either drops by more than 0.05.
const MEASURED_RECALL: f64 = 0.820;
const MEASURED_PRECISION: f64 = 0.700;

#[derive(serde::Deserialize)]
struct Passage {
    title: String,
    text: String,
}

/// The MuSiQue directory, or `None` (with a message) when its open-IE file is absent.
fn musique_dir(test: &str) -> Option<PathBuf> {
    let dir = PathBuf::from(
        std::env::var("ENGRAM_MUSIQUE_DIR").unwrap_or_else(|_| "../shared/data/musique".into()),
    );
    let dir = if dir.is_relative() {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(dir)
    } else {
        dir
    };
    if dir.join(GOLD_FILE).is_file() {
        Some(dir)
    } else {
        println!(
            "{test}: skipped, no {GOLD_FILE} in {} (set ENGRAM_MUSIQUE_DIR)",
            dir.display()
        );
        None
    }
}

fn load(dir: &std::path::Path) -> (OpenIeTable, Vec<Passage>) {
    let table = OpenIeTable::load(&dir.join(GOLD_FILE)).expect("the open-IE file loads");
    let corpus = std::fs::read_to_string(dir.join("corpus.json")).expect("corpus.json reads");
    (
        table,
        serde_json::from_str(&corpus).expect("corpus.json parses"),
    )
}

#[test]
fn imports_the_hipporag_musique_extractions() {
    let Some(dir) = musique_dir("imports_the_hipporag_musique_extractions") else {
        return;
    };
    let (table, corpus) = load(&dir);
    println!("import stats: {:?}", table.stats);
    let stats = &table.stats;
    assert_eq!(stats.rows, 1890);
    assert!(stats.imported >= 1880, "{stats:?}");
    assert_eq!(stats.imported, table.len());
    assert_eq!(stats.rows, stats.imported + stats.skipped_rows);
    let triples: usize = corpus
        .iter()
        .filter_map(|p| table.get(&format!("{}\n{}", p.title, p.text)))
        .map(|e| e.triples.len())
        .sum();
    assert!(
        stats.skipped_triples > 0 && stats.skipped_triples * 20 < triples,
        "{stats:?}, {triples} kept"
    );
    let found = corpus
        .iter()
        .filter(|p| table.get(&format!("{}\n{}", p.title, p.text)).is_some())
        .count();
    assert!(
        found >= 1880,
        "only {found} corpus passages have an extraction"
    );
    let first = table
        .get(&format!("{}\n{}", corpus[0].title, corpus[0].text))
        .expect("first passage");
    assert!(!first.entities.is_empty() && !first.triples.is_empty());
}

#[test]
fn fallback_recall_against_gpt_entities_does_not_regress() {
    let Some(dir) = musique_dir("fallback_recall_against_gpt_entities_does_not_regress") else {
        return;
    };
    let (table, corpus) = load(&dir);
    let extractor = FallbackExtractor::default();
    let (mut gold, mut found, mut ours, mut triples) = (0usize, 0usize, 0usize, 0usize);
    for p in &corpus {
        let input = PassageInput {
            title: &p.title,
            text: &p.text,
        };
        let Some(g) = table.get(&input.key()) else {
            continue;
        };
        let x = extractor.extract_passage(&input);
        let keys = |entities: &[String]| -> HashSet<String> {
            entities
                .iter()
                .map(|e| normalize_phrase(e))
                .filter(|e| !e.is_empty())
                .collect()
        };
        let (gk, ok) = (keys(&g.entities), keys(&x.entities));
        gold += gk.len();
        ours += ok.len();
        found += gk.intersection(&ok).count();
        triples += x.triples.len();
    }
    let (recall, precision) = (found as f64 / gold as f64, found as f64 / ours as f64);
    println!(
        "fallback vs gpt-3.5: recall {recall:.4}, precision {precision:.4}, {:.2} entities and {:.2} triples per passage",
        ours as f64 / corpus.len() as f64,
        triples as f64 / corpus.len() as f64
    );
    assert!(
        recall >= MEASURED_RECALL - 0.05,
        "recall {recall:.4} regressed"
    );
    assert!(
        precision >= MEASURED_PRECISION - 0.05,
        "precision {precision:.4} regressed"
    );
}

#[test]
fn precomputed_extractor_hits_corpus_passages_and_falls_back_otherwise() {
    let Some(dir) =
        musique_dir("precomputed_extractor_hits_corpus_passages_and_falls_back_otherwise")
    else {
        return;
    };
    let (table, corpus) = load(&dir);
    let extractor =
        PrecomputedExtractor::new(Arc::new(table), Arc::new(FallbackExtractor::default()));
    let known = PassageInput {
        title: &corpus[0].title,
        text: &corpus[0].text,
    };
    let unknown = PassageInput {
        title: "Engram",
        text: "Engram was written in Rust by the Hippocampus Project in 2025.",
    };
    let out = extractor.extract(&[known, unknown]).expect("extracts");
    assert_eq!(out.len(), 2);
    assert!(
        out[0]
            .entities
            .iter()
            .any(|e| e == "American Institute of Physics"),
        "{:?}",
        out[0]
    );
    assert_eq!(
        out[1],
        FallbackExtractor::default().extract_passage(&unknown)
    );
    assert!(
        out[1].entities.iter().any(|e| e == "Hippocampus Project"),
        "{:?}",
        out[1]
    );
    assert_eq!((extractor.hits(), extractor.misses()), (1, 1));
    assert_eq!(extractor.name(), "precomputed");
}
