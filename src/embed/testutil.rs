//! Test support: a tiny random-weight BERT model directory (config, safetensors, WordPiece tokenizer and
//! sentence-transformers files) written to a temporary directory, so unit tests need no downloaded model.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use serde_json::json;

/// What to vary in the tiny model.
pub(crate) struct TinyModel {
    /// Prefix of every tensor name (`""` or `"bert."`).
    pub prefix: &'static str,
    /// The dtype the tensors are stored in.
    pub dtype: DType,
    /// `sentence_bert_config.json`'s `max_seq_length`; `None` writes no such file.
    pub max_seq_length: Option<usize>,
    /// The pooling mode set to true in `1_Pooling/config.json`.
    pub pooling: &'static str,
    /// `hidden_act` in `config.json`.
    pub hidden_act: &'static str,
    /// `intermediate_size` written in `config.json` (the weights always have 16).
    pub intermediate_in_config: usize,
}

impl Default for TinyModel {
    fn default() -> Self {
        Self {
            prefix: "",
            dtype: DType::F32,
            max_seq_length: Some(16),
            pooling: "pooling_mode_mean_tokens",
            hidden_act: "gelu",
            intermediate_in_config: 16,
        }
    }
}

const VOCAB: &[&str] = &[
    "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "sat", "on", "mat", "a", "dog",
    "##s", "!", ".", ",",
];
const HIDDEN: usize = 8;
const INTERMEDIATE: usize = 16;
const LAYERS: usize = 2;
const MAX_POSITIONS: usize = 32;
const CONFIG_VOCAB: usize = 20;

/// Deterministic pseudo-random values in [-scale, scale] (a 64-bit LCG), so runs are reproducible.
fn values(seed: &mut u64, n: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|_| {
            *seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((*seed >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

fn weights(prefix: &str, dtype: DType) -> HashMap<String, Tensor> {
    let mut seed = 42u64;
    let mut out = HashMap::new();
    let mut add = |name: String, shape: &[usize], centre: f32, scale: f32| {
        let n = shape.iter().product();
        let data: Vec<f32> = values(&mut seed, n, scale)
            .into_iter()
            .map(|v| v + centre)
            .collect();
        let tensor = Tensor::from_vec(data, shape, &Device::Cpu)
            .and_then(|t| t.to_dtype(dtype))
            .unwrap();
        out.insert(format!("{prefix}{name}"), tensor);
    };
    add(
        "embeddings.word_embeddings.weight".into(),
        &[CONFIG_VOCAB, HIDDEN],
        0.0,
        1.0,
    );
    add(
        "embeddings.position_embeddings.weight".into(),
        &[MAX_POSITIONS, HIDDEN],
        0.0,
        0.5,
    );
    add(
        "embeddings.token_type_embeddings.weight".into(),
        &[2, HIDDEN],
        0.0,
        0.5,
    );
    add("embeddings.LayerNorm.weight".into(), &[HIDDEN], 1.0, 0.2);
    add("embeddings.LayerNorm.bias".into(), &[HIDDEN], 0.0, 0.2);
    for i in 0..LAYERS {
        let p = format!("encoder.layer.{i}");
        for (name, rows, cols) in [
            ("attention.self.query", HIDDEN, HIDDEN),
            ("attention.self.key", HIDDEN, HIDDEN),
            ("attention.self.value", HIDDEN, HIDDEN),
            ("attention.output.dense", HIDDEN, HIDDEN),
            ("intermediate.dense", INTERMEDIATE, HIDDEN),
            ("output.dense", HIDDEN, INTERMEDIATE),
        ] {
            add(format!("{p}.{name}.weight"), &[rows, cols], 0.0, 0.6);
            add(format!("{p}.{name}.bias"), &[rows], 0.0, 0.2);
        }
        for norm in ["attention.output.LayerNorm", "output.LayerNorm"] {
            add(format!("{p}.{norm}.weight"), &[HIDDEN], 1.0, 0.2);
            add(format!("{p}.{norm}.bias"), &[HIDDEN], 0.0, 0.2);
        }
    }
    out
}

fn tokenizer_json() -> serde_json::Value {
    let vocab: serde_json::Map<String, serde_json::Value> = VOCAB
        .iter()
        .enumerate()
        .map(|(i, t)| ((*t).to_owned(), json!(i)))
        .collect();
    let added: Vec<serde_json::Value> = VOCAB[..5]
        .iter()
        .enumerate()
        .map(|(i, t)| {
            json!({"id": i, "content": t, "single_word": false, "lstrip": false, "rstrip": false,
                   "normalized": false, "special": true})
        })
        .collect();
    json!({
        "version": "1.0",
        "truncation": {"max_length": 4, "strategy": "LongestFirst", "stride": 0},
        "padding": {"strategy": {"Fixed": 12}, "direction": "Right", "pad_to_multiple_of": null, "pad_id": 0,
                    "pad_type_id": 0, "pad_token": "[PAD]"},
        "added_tokens": added,
        "normalizer": {"type": "BertNormalizer", "clean_text": true, "handle_chinese_chars": true,
                       "strip_accents": null, "lowercase": true},
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "post_processor": {"type": "BertProcessing", "sep": ["[SEP]", 3], "cls": ["[CLS]", 2]},
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": true},
        "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                  "max_input_chars_per_word": 100, "vocab": vocab}
    })
}

/// Writes the tiny model to a fresh temporary directory. Its tokenizer.json deliberately carries truncation at 4 and
/// fixed padding to 12 (as the real all-MiniLM-L6-v2 file carries 128), which the embedder must override.
pub(crate) fn tiny_model(spec: &TinyModel) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, value: serde_json::Value| {
        let path = dir.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, serde_json::to_string_pretty(&value).unwrap()).unwrap();
    };
    write(
        "config.json",
        json!({
            "architectures": ["BertModel"], "model_type": "bert", "hidden_act": spec.hidden_act,
            "hidden_size": HIDDEN, "num_hidden_layers": LAYERS, "num_attention_heads": 2,
            "intermediate_size": spec.intermediate_in_config, "max_position_embeddings": MAX_POSITIONS,
            "layer_norm_eps": 1e-12, "type_vocab_size": 2, "vocab_size": CONFIG_VOCAB,
            "position_embedding_type": "absolute", "pad_token_id": 0
        }),
    );
    write("tokenizer.json", tokenizer_json());
    write(
        "tokenizer_config.json",
        json!({"do_lower_case": true, "tokenizer_class": "BertTokenizer"}),
    );
    write(
        "modules.json",
        json!([
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}
        ]),
    );
    let mut pooling = json!({
        "word_embedding_dimension": HIDDEN, "pooling_mode_cls_token": false, "pooling_mode_mean_tokens": false,
        "pooling_mode_max_tokens": false, "pooling_mode_mean_sqrt_len_tokens": false
    });
    pooling[spec.pooling] = json!(true);
    write("1_Pooling/config.json", pooling);
    if let Some(max) = spec.max_seq_length {
        write(
            "sentence_bert_config.json",
            json!({"max_seq_length": max, "do_lower_case": false}),
        );
    }
    candle_core::safetensors::save(
        &weights(spec.prefix, spec.dtype),
        dir.path().join("model.safetensors"),
    )
    .unwrap();
    dir
}
