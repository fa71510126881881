//! Model files against the committed Hugging Face fixtures (`tests/fixtures/engine/`): configs in both forms,
//! single and sharded safetensors, bf16 upcast, tokenizers and chat templates against transformers' output,
//! Llama 3 rope scaling, bad inputs, and synthetic models.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType as CandleDType, Device, Tensor};
use engram_engine::internals::model::synthetic::{synthetic_config, synthetic_weights};
use engram_engine::internals::model::{
    Architecture, ChatMessage, DType, ModelConfig, ModelError, ModelFiles, RopeScaling, Weights,
};
use serde_json::Value;

const FIXTURES: [&str; 6] = [
    "llama",
    "llama_sharded",
    "llama31",
    "qwen2",
    "qwen2_bf16",
    "mistral",
];

fn dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/engine")
        .join(name)
}

fn load(name: &str) -> ModelFiles {
    ModelFiles::load(dir(name).to_str().unwrap()).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn reference(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir(name).join("reference.json")).unwrap())
        .unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// A copy of a fixture directory to corrupt.
fn copy(name: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(dir(name)).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, tmp.path().join(path.file_name().unwrap())).unwrap();
    }
    tmp
}

fn load_err(path: &Path) -> ModelError {
    ModelFiles::load(path.to_str().unwrap()).unwrap_err()
}

#[test]
fn every_fixture_loads_with_its_config() {
    for name in FIXTURES {
        let files = load(name);
        let c = &files.config;
        assert_eq!(files.name, name);
        assert_eq!(
            (c.vocab_size, c.hidden_size, c.intermediate_size),
            (384, 64, 128),
            "{name}"
        );
        assert_eq!(
            (c.num_layers, c.num_heads, c.num_kv_heads, c.head_dim),
            (2, 4, 2, 16),
            "{name}"
        );
        assert_eq!(c.max_position_embeddings, 256);
        assert_eq!(files.weights.len(), files.weights.names().len());
        assert_eq!(files.weights.param_count(), c.param_count(), "{name}");
        assert_eq!(
            files.weights.bytes() as u64,
            4 * c.param_count(),
            "{name}: f32 in memory"
        );
        assert_eq!(files.tokenizer.vocab_size(), 384);
        let r = reference(name);
        assert_eq!(
            c.architecture.hf_class(),
            r["architecture"].as_str().unwrap()
        );
        let expected_dtype = if name == "qwen2_bf16" {
            DType::BF16
        } else {
            DType::F32
        };
        assert_eq!(c.dtype, expected_dtype, "{name}");
    }
    let mistral = load("mistral").config;
    assert_eq!(
        (mistral.architecture, mistral.sliding_window),
        (Architecture::Mistral, Some(4096))
    );
    assert_eq!(
        (
            mistral.rope_theta,
            mistral.rms_norm_eps,
            mistral.eos_token_ids
        ),
        (1e6, 1e-6, vec![2])
    );
    let qwen = load("qwen2");
    let q = &qwen.config;
    assert!(q.tie_word_embeddings && q.attention_bias && q.sliding_window.is_none());
    assert_eq!(
        (q.architecture, q.bos_token_id, q.eos_token_ids.clone()),
        (Architecture::Qwen2, Some(2), vec![5, 2])
    );
    assert!(matches!(
        qwen.weights.get("lm_head.weight"),
        Err(ModelError::MissingTensor { .. })
    ));
    assert_eq!(
        qwen.weights
            .get("model.layers.1.self_attn.k_proj.bias")
            .unwrap()
            .dims(),
        [32]
    );
    assert_eq!(qwen.tokenizer.eos_token_ids(), vec![5, 2]);
    let llama = load("llama");
    assert_eq!(llama.tokenizer.eos_token_ids(), vec![2, 8]);
    assert_eq!(
        llama.weights.get("lm_head.weight").unwrap().dims(),
        [384, 64]
    );
    assert_eq!(llama.tokenizer.generation().do_sample, Some(false));
}

#[test]
fn sharded_equals_single_file_tensor_for_tensor() {
    let (single, sharded) = (load("llama"), load("llama_sharded"));
    assert_eq!(
        single.config, sharded.config,
        "classic and transformers 5 config forms agree"
    );
    assert_eq!(single.weights.names(), sharded.weights.names());
    for name in single.weights.names() {
        let (a, b) = (
            single.weights.get(name).unwrap(),
            sharded.weights.get(name).unwrap(),
        );
        assert_eq!(a.dims(), b.dims());
        assert_eq!(values(a), values(b), "{name}");
    }
}

#[test]
fn bf16_checkpoint_is_upcast_and_matches_f32_within_rounding() {
    let (f32s, bf16s) = (load("qwen2"), load("qwen2_bf16"));
    assert_eq!(f32s.weights.names(), bf16s.weights.names());
    let mut max_rel = 0f32;
    for name in f32s.weights.names() {
        let b = bf16s.weights.get(name).unwrap();
        assert_eq!(b.dtype(), CandleDType::F32);
        let a = f32s.weights.get(name).unwrap();
        let rounded = values(
            &a.to_dtype(CandleDType::BF16)
                .unwrap()
                .to_dtype(CandleDType::F32)
                .unwrap(),
        );
        assert_eq!(
            values(b),
            rounded,
            "{name}: the file holds qwen2 rounded to bf16"
        );
        for (x, y) in values(a).iter().zip(values(b)) {
            max_rel = max_rel.max((x - y).abs() / x.abs().max(1e-30));
        }
    }
    assert!(max_rel > 0.0 && max_rel <= 2f32.powi(-8), "{max_rel}");
}

#[test]
fn chat_templates_and_tokenization_match_transformers() {
    for name in FIXTURES {
        let (tok, r) = (load(name).tokenizer, reference(name));
        let chat = &r["chat_example"];
        let messages: Vec<ChatMessage> = serde_json::from_value(chat["messages"].clone()).unwrap();
        let add = chat["add_generation_prompt"].as_bool().unwrap();
        let text = tok.apply_chat_template(&messages, add).unwrap();
        assert_eq!(text, chat["text"].as_str().unwrap(), "{name}");
        assert_eq!(
            tok.encode(&text, false).unwrap(),
            ids(&chat["ids"]),
            "{name}"
        );
        for prompt in r["prompts"].as_array().unwrap() {
            let text = prompt["text"].as_str().unwrap();
            let expected = ids(&prompt["ids"]);
            assert_eq!(
                tok.encode(text, true).unwrap(),
                expected,
                "{name}: {text:?}"
            );
            assert_eq!(
                tok.decode(&expected, true).unwrap().trim_start(),
                text,
                "{name}"
            );
        }
        assert_eq!(tok.token_to_id("<|im_end|>"), Some(5));
        assert_eq!(tok.id_to_token(8).as_deref(), Some("<|eot_id|>"));
        assert_eq!(tok.decode(&[5000], false).unwrap(), "");
    }
}

#[test]
fn llama31_rope_scaling_matches_an_independent_computation() {
    let (plain, scaled) = (load("llama").config, load("llama31").config);
    let Some(RopeScaling::Llama3 {
        factor,
        low_freq_factor,
        high_freq_factor,
        original_max_position_embeddings,
    }) = scaled.rope_scaling
    else {
        panic!("llama31 has llama3 rope scaling: {:?}", scaled.rope_scaling);
    };
    assert_eq!(
        (
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings
        ),
        (8.0, 1.0, 4.0, 64)
    );
    assert_eq!(scaled.rope_theta, 5e5);
    // Written from the Llama 3.1 description: keep high frequencies, divide low ones by the factor, and
    // interpolate linearly in (context / wavelength) between the two bands.
    let expected: Vec<f64> = (0..8)
        .map(|i| {
            let freq = 500000f64.powf(-(i as f64) / 8.0);
            let wavelength = std::f64::consts::TAU / freq;
            let ratio = 64.0 / wavelength; // context length over wavelength
            if ratio >= 4.0 {
                freq
            } else if ratio <= 1.0 {
                freq / 8.0
            } else {
                let t = (ratio - 1.0) / 3.0;
                freq / 8.0 + t * (freq - freq / 8.0)
            }
        })
        .collect();
    let got = scaled.rope_inv_freq();
    assert_eq!(got.len(), 8);
    for (g, e) in got.iter().zip(&expected) {
        assert!((*g as f64 - e).abs() <= e * 1e-6, "{got:?} vs {expected:?}");
    }
    let theta_only: Vec<f32> = (0..8)
        .map(|i| 500000f64.powf(-(i as f64) / 8.0) as f32)
        .collect();
    assert_ne!(got, theta_only, "scaling changes some frequencies");
    assert_ne!(got, plain.rope_inv_freq());
    assert_eq!(got[0], 1.0, "the highest frequency is kept");
}

#[test]
fn bad_inputs_give_precise_errors() {
    let missing = Path::new("/nonexistent/model/dir");
    let err = load_err(missing);
    assert!(
        matches!(&err, ModelError::Missing { hint, .. } if hint.contains("config.json")),
        "{err}"
    );

    let tmp = copy("llama");
    std::fs::write(tmp.path().join("config.json"), "{\"vocab_size\": 384,").unwrap();
    let err = load_err(tmp.path());
    assert!(
        matches!(&err, ModelError::Invalid { file, .. } if file.ends_with("config.json")),
        "{err}"
    );

    let config = std::fs::read_to_string(dir("llama").join("config.json")).unwrap();
    let gpt2 = config.replace("LlamaForCausalLM", "GPT2LMHeadModel");
    std::fs::write(tmp.path().join("config.json"), gpt2).unwrap();
    assert!(
        matches!(load_err(tmp.path()), ModelError::Unsupported(m) if m.contains("GPT2LMHeadModel"))
    );
    std::fs::write(tmp.path().join("config.json"), &config).unwrap();

    let weights = tmp.path().join("model.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    for corrupt in [
        bytes[..bytes.len() / 2].to_vec(),
        b"garbage, not safetensors".to_vec(),
    ] {
        std::fs::write(&weights, corrupt).unwrap();
        let err = load_err(tmp.path());
        assert!(
            matches!(&err, ModelError::Invalid { file, .. } if *file == weights),
            "{err}"
        );
    }

    let mut map =
        candle_core::safetensors::load(dir("llama").join("model.safetensors"), &Device::Cpu)
            .unwrap();
    map.remove("model.layers.1.mlp.up_proj.weight");
    candle_core::safetensors::save(&map, &weights).unwrap();
    let err = load_err(tmp.path());
    let name = "model.layers.1.mlp.up_proj.weight";
    assert!(
        matches!(&err, ModelError::MissingTensor { name: n, .. } if n == name),
        "{err}"
    );

    std::fs::remove_file(&weights).unwrap();
    assert!(matches!(load_err(tmp.path()), ModelError::Missing { .. }));

    let sharded = copy("llama_sharded");
    let shard = sharded.path().join("model-00002-of-00002.safetensors");
    std::fs::write(&shard, b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}").unwrap();
    let err = load_err(sharded.path());
    assert!(
        matches!(&err, ModelError::Invalid { file, .. } if *file == shard),
        "{err}"
    );
    std::fs::remove_file(&shard).unwrap();
    assert!(matches!(load_err(sharded.path()), ModelError::Missing { path, .. } if path == shard));

    let no_template = copy("qwen2");
    std::fs::remove_file(no_template.path().join("tokenizer_config.json")).unwrap();
    let tok = ModelFiles::load(no_template.path().to_str().unwrap())
        .unwrap()
        .tokenizer;
    let err = tok
        .apply_chat_template(&[ChatMessage::new("user", "hi")], true)
        .unwrap_err();
    assert!(matches!(err, ModelError::Template(_)), "{err}");
    std::fs::write(no_template.path().join("tokenizer.json"), "{}").unwrap();
    let err = load_err(no_template.path());
    assert!(
        matches!(&err, ModelError::Invalid { file, .. } if file.ends_with("tokenizer.json")),
        "{err}"
    );
}

#[test]
fn synthetic_models_are_deterministic() {
    let a = ModelFiles::load("synthetic:tiny").unwrap();
    let b = ModelFiles::load("synthetic:tiny").unwrap();
    assert_eq!(a.name, "synthetic:tiny");
    assert_eq!(a.weights.param_count(), a.config.param_count());
    assert_eq!(a.weights.names(), b.weights.names());
    for name in a.weights.names() {
        assert_eq!(
            values(a.weights.get(name).unwrap()),
            values(b.weights.get(name).unwrap())
        );
    }
    let other = synthetic_weights(&a.config, 1).unwrap();
    assert_ne!(
        values(other.get("lm_head.weight").unwrap()),
        values(a.weights.get("lm_head.weight").unwrap())
    );
    let norm = values(a.weights.get("model.norm.weight").unwrap());
    assert!(norm.iter().all(|x| (x - 1.0).abs() < 0.1));
    let ids = a.tokenizer.encode("hello", true).unwrap();
    assert!(ids.iter().all(|&i| (i as usize) < a.config.vocab_size));
    assert!(matches!(
        ModelFiles::load("synthetic:nope"),
        Err(ModelError::UnknownSynthetic { .. })
    ));
    assert_eq!(
        synthetic_config("qwen2.5-0.5b").unwrap().param_count(),
        494_032_768
    );
    let from_map = Weights::from_tensors(HashMap::from([(
        "x".to_string(),
        Tensor::ones(3, CandleDType::F32, &Device::Cpu).unwrap(),
    )]));
    assert_eq!(
        (from_map.len(), from_map.bytes(), from_map.is_empty()),
        (1, 12, false)
    );
}

#[test]
fn config_round_trips_through_from_json() {
    let json = std::fs::read_to_string(dir("llama31").join("config.json")).unwrap();
    let c = ModelConfig::from_json(&json, Path::new("llama31/config.json")).unwrap();
    assert_eq!(c, load("llama31").config);
    c.validate().unwrap();
}

/// Generation time of the real-shaped Qwen2.5-0.5B synthetic weights (2 GB of f32):
/// `cargo test --release --test engine_model -- --ignored --nocapture`.
#[test]
#[ignore = "allocates 2 GB; run explicitly for the timing"]
fn synthetic_qwen_0_5b_generation_time() {
    let config = synthetic_config("qwen2.5-0.5b").unwrap();
    let start = std::time::Instant::now();
    let weights = synthetic_weights(&config, 42).unwrap();
    let elapsed = start.elapsed();
    assert_eq!(weights.param_count(), 494_032_768);
    eprintln!(
        "synthetic qwen2.5-0.5b: {} params, {} MB, {elapsed:?}",
        weights.param_count(),
        weights.bytes() >> 20
    );
}
