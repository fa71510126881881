//! The candle BERT embedder against the independent NumPy reference (`scripts/reference_embeddings.py`, which wrote
//! `tests/fixtures/embeddings/minilm_reference.json`), on the real all-MiniLM-L6-v2 fetched by `make setup`.
#![allow(clippy::disallowed_methods)] // test and benchmark harnesses read their fixtures' locations from the environment

use std::path::{Path, PathBuf};

use engram::embed::{BertEmbedder, EmbedError, Embedder};
use serde::Deserialize;

#[derive(Deserialize)]
struct Reference {
    model: String,
    max_seq_length: usize,
    sentences: Vec<String>,
    tokens: Vec<usize>,
    truncated: Vec<bool>,
    vectors: Vec<Vec<f32>>,
}

fn model_dir() -> PathBuf {
    std::env::var_os("ENGRAM_EMBED_MODEL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("models/all-MiniLM-L6-v2"))
}

fn load_model() -> BertEmbedder {
    let dir = model_dir();
    assert!(
        dir.join("model.safetensors").is_file(),
        "no embedding model at {}: run `make setup` (scripts/fetch-model.sh) to fetch all-MiniLM-L6-v2 into models/ \
         (or set ENGRAM_EMBED_MODEL_DIR)",
        dir.display()
    );
    BertEmbedder::load(&dir, 8).unwrap_or_else(|e| panic!("loading {}: {e}", dir.display()))
}

fn reference() -> Reference {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/embeddings/minilm_reference.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum();
    let na: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

#[test]
fn minilm_matches_numpy_reference() {
    let embedder = load_model();
    let reference = reference();
    assert_eq!(embedder.model_name(), reference.model);
    assert_eq!(embedder.dimension(), 384);
    assert_eq!(embedder.max_tokens(), reference.max_seq_length);
    assert_eq!(embedder.max_tokens(), 256);

    let texts: Vec<&str> = reference.sentences.iter().map(String::as_str).collect();
    let out = embedder.embed(&texts).unwrap();
    assert_eq!(out.len(), texts.len());
    let (mut worst, mut max_diff) = (1.0f64, 0.0f32);
    for (i, e) in out.iter().enumerate() {
        let cos = cosine(&e.vector, &reference.vectors[i]);
        worst = worst.min(cos);
        let diff = e
            .vector
            .iter()
            .zip(&reference.vectors[i])
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        max_diff = max_diff.max(diff);
        assert!(
            cos >= 0.9999,
            "sentence {i} {:?}: cosine {cos} with the reference",
            texts[i]
        );
        assert_eq!(
            e.tokens, reference.tokens[i],
            "token count of sentence {i} {:?}",
            texts[i]
        );
        assert_eq!(
            e.truncated, reference.truncated[i],
            "truncation of sentence {i} {:?}",
            texts[i]
        );
        let norm: f32 = e.vector.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "sentence {i}: norm {norm}");
    }
    eprintln!(
        "NumPy reference: worst cosine {worst:.9}, largest component difference {max_diff:e}"
    );

    let long = texts
        .iter()
        .position(|t| t.len() > 1000)
        .expect("the fixture has a long sentence");
    assert!(out[long].truncated, "the long sentence is truncated");
    assert_eq!(out[long].tokens, 256);
    assert_eq!(
        out.iter().filter(|e| e.truncated).count(),
        1,
        "only the long sentence is truncated"
    );
    let empty = texts
        .iter()
        .position(|t| t.is_empty())
        .expect("the fixture has an empty sentence");
    assert_eq!(out[empty].tokens, 2, "an empty input is [CLS] [SEP]");
}

#[test]
fn missing_model_dir_says_to_run_make_setup() {
    let root = tempfile::tempdir().unwrap();
    let err = BertEmbedder::load(&root.path().join("all-MiniLM-L6-v2"), 32).unwrap_err();
    match &err {
        EmbedError::ModelMissing { hint, .. } => assert!(hint.contains("make setup"), "{hint}"),
        other => panic!("expected ModelMissing, got {other:?}"),
    }
    assert!(err.to_string().contains("make setup"), "{err}");
}
