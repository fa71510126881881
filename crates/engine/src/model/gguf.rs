//! GGUF model files (llama.cpp's format): one file with the hyperparameters, the tokenizer and the weights,
//! read with candle-core's `quantized::gguf_file`. The `llama` and `qwen2` architectures map onto
//! [`ModelConfig`]; tensors are renamed to Hugging Face's names (`blk.3.attn_q.weight` →
//! `model.layers.3.self_attn.q_proj.weight`); quantized weights stay quantized ([`Weights::quantized`]), float
//! ones become f32.
//!
//! llama.cpp's converter permutes the rows of Q and K of `llama` files (rotary pairs interleaved instead of in
//! halves); [`unpermute_rows`] undoes it, on the raw quantized rows, so the engine's rotary embedding (halves, as
//! in transformers) applies unchanged. `qwen2` files are written unpermuted.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Seek};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};

use super::config::{Architecture, DType, ModelConfig};
use super::weights::{expected_tensors, Weights};
use super::{gguf_header, gguf_tokenizer, invalid, ModelError, ModelFiles};
use crate::backend::cpu_tensor::select_rows;

/// An open GGUF file: its metadata and tensor directory (the tensor data is read on demand).
pub struct GgufFile {
    path: PathBuf,
    content: Content,
    file_len: u64,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("tensors", &self.content.tensor_infos.len())
            .finish()
    }
}

impl GgufFile {
    /// Reads the header of `path`, checking that every tensor lies inside the file (a truncated download is
    /// named as such) and that every tensor type is one candle supports.
    pub fn open(path: &Path) -> Result<Self, ModelError> {
        let file = File::open(path).map_err(|e| invalid(path, e))?;
        let file_len = file.metadata().map_err(|e| invalid(path, e))?.len();
        let mut reader = BufReader::new(file);
        // candle's reader trusts the header's lengths: walk them first, so that it never allocates more than the
        // file holds or recurses without bound.
        gguf_header::check(&mut reader, file_len)
            .map_err(|reason| invalid(path, format!("malformed GGUF header: {reason}")))?;
        reader
            .seek(std::io::SeekFrom::Start(0))
            .map_err(|e| invalid(path, e))?;
        // A malformed header the walk lets through must not take the process down either.
        let read =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| Content::read(&mut reader)));
        let content = match read {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                let reason =
                    format!("not a readable GGUF file (or an unsupported tensor type): {e}");
                return Err(invalid(path, reason));
            }
            Err(_) => return Err(invalid(path, "malformed GGUF header")),
        };
        let this = Self {
            path: path.to_path_buf(),
            content,
            file_len,
        };
        this.check_extents()?;
        Ok(this)
    }

    fn check_extents(&self) -> Result<(), ModelError> {
        for (name, info) in &self.content.tensor_infos {
            let (block, size) = (info.ggml_dtype.block_size(), info.ggml_dtype.type_size());
            let overflow = || invalid(&self.path, format!("tensor `{name}`: its size overflows"));
            let elems = info
                .shape
                .dims()
                .iter()
                .try_fold(1usize, |n, &d| n.checked_mul(d))
                .ok_or_else(overflow)?;
            if elems % block != 0 {
                let reason =
                    format!("tensor `{name}`: {elems} elements are not whole blocks of {block}");
                return Err(invalid(&self.path, reason));
            }
            let end = (elems / block)
                .checked_mul(size)
                .and_then(|bytes| u64::try_from(bytes).ok())
                .and_then(|bytes| bytes.checked_add(info.offset))
                .and_then(|bytes| bytes.checked_add(self.content.tensor_data_offset))
                .ok_or_else(overflow)?;
            if end > self.file_len {
                let reason = format!(
                    "truncated: tensor `{name}` ends at byte {end} but the file has {} bytes \
                     (an interrupted download? fetch it again)",
                    self.file_len
                );
                return Err(invalid(&self.path, reason));
            }
        }
        Ok(())
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A metadata value.
    pub fn meta(&self, key: &str) -> Option<&Value> {
        self.content.metadata.get(key)
    }

    /// A string metadata value, or an error naming the key.
    pub fn meta_str(&self, key: &str) -> Result<&str, ModelError> {
        match self.meta(key) {
            Some(Value::String(s)) => Ok(s),
            Some(_) => Err(invalid(
                &self.path,
                format!("metadata `{key}` is not a string"),
            )),
            None => Err(invalid(&self.path, format!("metadata `{key}` is missing"))),
        }
    }

    /// An integer metadata value (any integer type), `None` when absent.
    pub fn meta_usize(&self, key: &str) -> Result<Option<usize>, ModelError> {
        let Some(v) = self.meta(key) else {
            return Ok(None);
        };
        let n = match v {
            Value::U8(x) => Some(u64::from(*x)),
            Value::U16(x) => Some(u64::from(*x)),
            Value::U32(x) => Some(u64::from(*x)),
            Value::U64(x) => Some(*x),
            Value::I8(x) => u64::try_from(*x).ok(),
            Value::I16(x) => u64::try_from(*x).ok(),
            Value::I32(x) => u64::try_from(*x).ok(),
            Value::I64(x) => u64::try_from(*x).ok(),
            _ => None,
        };
        n.and_then(|n| usize::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| invalid(&self.path, format!("metadata `{key}` is not a count")))
    }

    /// A float metadata value, `None` when absent.
    pub fn meta_f64(&self, key: &str) -> Result<Option<f64>, ModelError> {
        match self.meta(key) {
            None => Ok(None),
            Some(Value::F32(x)) => Ok(Some(f64::from(*x))),
            Some(Value::F64(x)) => Ok(Some(*x)),
            Some(_) => Err(invalid(
                &self.path,
                format!("metadata `{key}` is not a float"),
            )),
        }
    }

    /// A boolean metadata value, `None` when absent.
    pub fn meta_bool(&self, key: &str) -> Option<bool> {
        match self.meta(key) {
            Some(Value::Bool(b)) => Some(*b),
            _ => None,
        }
    }

    /// The shape (`[rows, cols]` for matrices, as in PyTorch) of a tensor, if present.
    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.content.tensor_infos.get(name).map(|i| i.shape.dims())
    }

    /// Reads one tensor's blocks.
    pub fn qtensor(&self, name: &str) -> Result<QTensor, ModelError> {
        let file = File::open(&self.path).map_err(|e| invalid(&self.path, e))?;
        let mut reader = BufReader::new(file);
        self.content
            .tensor(&mut reader, name, &Device::Cpu)
            .map_err(|e| invalid(&self.path, format!("tensor `{name}`: {e}")))
    }

    /// The model configuration from the `{arch}.*` metadata.
    pub fn config(&self) -> Result<ModelConfig, ModelError> {
        let arch_name = self.meta_str("general.architecture")?;
        let architecture = match arch_name {
            "llama" => Architecture::Llama,
            "qwen2" => Architecture::Qwen2,
            other => {
                return Err(ModelError::Unsupported(format!(
                    "GGUF architecture `{other}` in {} (supported: llama, qwen2)",
                    self.path.display()
                )))
            }
        };
        let key = |k: &str| format!("{arch_name}.{k}");
        let need = |k: &str| -> Result<usize, ModelError> {
            self.meta_usize(&key(k))?
                .ok_or_else(|| invalid(&self.path, format!("metadata `{}` is missing", key(k))))
        };
        if self.meta(&key("rope.scaling.type")).is_some()
            || self.shape("rope_freqs.weight").is_some()
        {
            let kind = self
                .meta_str(&key("rope.scaling.type"))
                .unwrap_or("rope_freqs");
            if kind != "none" {
                return Err(ModelError::Unsupported(format!(
                    "GGUF rope scaling `{kind}`"
                )));
            }
        }
        let hidden_size = need("embedding_length")?;
        let num_heads = need("attention.head_count")?;
        let head_dim = match self.meta_usize(&key("attention.key_length"))? {
            Some(d) => d,
            None if num_heads > 0 => hidden_size / num_heads,
            None => 0,
        };
        let vocab_size = self
            .shape("token_embd.weight")
            .and_then(|s| s.first().copied())
            .ok_or_else(|| invalid(&self.path, "tensor `token_embd.weight` is missing"))?;
        let config = ModelConfig {
            architecture,
            vocab_size,
            hidden_size,
            intermediate_size: need("feed_forward_length")?,
            num_layers: need("block_count")?,
            num_heads,
            num_kv_heads: self
                .meta_usize(&key("attention.head_count_kv"))?
                .unwrap_or(num_heads),
            head_dim,
            rms_norm_eps: self
                .meta_f64(&key("attention.layer_norm_rms_epsilon"))?
                .unwrap_or(1e-6),
            rope_theta: self.meta_f64(&key("rope.freq_base"))?.unwrap_or(10_000.0),
            rope_scaling: None,
            max_position_embeddings: need("context_length")?,
            tie_word_embeddings: self.shape("output.weight").is_none(),
            attention_bias: self.shape("blk.0.attn_q.bias").is_some(),
            dtype: DType::F32,
            sliding_window: None,
            bos_token_id: self.token_id("tokenizer.ggml.bos_token_id")?,
            eos_token_ids: self
                .token_id("tokenizer.ggml.eos_token_id")?
                .into_iter()
                .collect(),
        };
        config
            .validate()
            .map_err(|e| invalid(&self.path, e.to_string()))?;
        Ok(config)
    }

    fn token_id(&self, key: &str) -> Result<Option<u32>, ModelError> {
        Ok(self.meta_usize(key)?.and_then(|v| u32::try_from(v).ok()))
    }

    /// The weights under Hugging Face names, every tensor of [`expected_tensors`] present with its shape:
    /// quantized matrices kept quantized, norms and float tensors as f32, Q/K rows of `llama` files unpermuted.
    pub fn weights(&self, config: &ModelConfig) -> Result<Weights, ModelError> {
        let mut dense = HashMap::new();
        let mut quantized = HashMap::new();
        for (hf, shape) in expected_tensors(config) {
            let name = gguf_name(&hf)
                .ok_or_else(|| ModelError::Unsupported(format!("no GGUF name for `{hf}`")))?;
            let found = self.shape(&name).ok_or_else(|| ModelError::MissingTensor {
                name: name.clone(),
                files: self.path.display().to_string(),
            })?;
            if found != shape.as_slice() {
                let reason = format!("tensor `{name}` has shape {found:?}, expected {shape:?}");
                return Err(invalid(&self.path, reason));
            }
            let mut q = self.qtensor(&name)?;
            if config.architecture == Architecture::Llama {
                if let Some(heads) = permuted_heads(&hf, config) {
                    q = self.unpermute(&name, &q, heads)?;
                }
            }
            match q.dtype() {
                GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16 => {
                    let t = q
                        .dequantize(&Device::Cpu)
                        .map_err(|e| invalid(&self.path, format!("tensor `{name}`: {e}")))?;
                    dense.insert(hf, t);
                }
                _ => {
                    quantized.insert(hf, Arc::new(q));
                }
            }
        }
        Ok(Weights::from_parts(
            dense,
            quantized,
            self.path.display().to_string(),
        ))
    }

    fn unpermute(&self, name: &str, q: &QTensor, heads: usize) -> Result<QTensor, ModelError> {
        let err = |e: candle_core::Error| invalid(&self.path, format!("tensor `{name}`: {e}"));
        let rows = q.shape().dims()[0];
        let order = unpermute_rows(rows, heads);
        match q.shape().rank() {
            1 => {
                let t = q.dequantize(&Device::Cpu).map_err(err)?;
                let index = Tensor::from_vec(order, rows, &Device::Cpu).map_err(err)?;
                let t = t.index_select(&index, 0).map_err(err)?;
                QTensor::quantize(&t, GgmlDType::F32).map_err(err)
            }
            _ => select_rows(q, order.into_iter().map(|r| r as usize)).map_err(err),
        }
    }
}

/// The number of heads whose rows llama.cpp permuted in a `llama` file's tensor `hf` (Q: query heads, K:
/// key/value heads), `None` for every other tensor.
pub fn permuted_heads(hf: &str, config: &ModelConfig) -> Option<usize> {
    if hf.ends_with("self_attn.q_proj.weight") || hf.ends_with("self_attn.q_proj.bias") {
        Some(config.num_heads)
    } else if hf.ends_with("self_attn.k_proj.weight") || hf.ends_with("self_attn.k_proj.bias") {
        Some(config.num_kv_heads)
    } else {
        None
    }
}

/// For each row of the unpermuted (Hugging Face) tensor, the row of the GGUF tensor it comes from. llama.cpp
/// wrote, per head of `d` rows, row `j * d/2 + i` (rotary half `j`, pair `i`) at `2 * i + j`.
pub fn unpermute_rows(rows: usize, heads: usize) -> Vec<u32> {
    let d = rows / heads.max(1);
    let half = d / 2;
    (0..rows)
        .map(|r| {
            let (h, within) = (r / d, r % d);
            let (j, i) = (within / half, within % half);
            (h * d + 2 * i + j) as u32
        })
        .collect()
}

/// The GGUF tensor name of a Hugging Face tensor name of a Llama-family model.
pub fn gguf_name(hf: &str) -> Option<String> {
    match hf {
        "model.embed_tokens.weight" => return Some("token_embd.weight".into()),
        "model.norm.weight" => return Some("output_norm.weight".into()),
        "lm_head.weight" => return Some("output.weight".into()),
        _ => {}
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, tail) = rest.split_once('.')?;
    let mapped = match tail {
        "input_layernorm.weight" => "attn_norm.weight",
        "post_attention_layernorm.weight" => "ffn_norm.weight",
        "self_attn.q_proj.weight" => "attn_q.weight",
        "self_attn.k_proj.weight" => "attn_k.weight",
        "self_attn.v_proj.weight" => "attn_v.weight",
        "self_attn.q_proj.bias" => "attn_q.bias",
        "self_attn.k_proj.bias" => "attn_k.bias",
        "self_attn.v_proj.bias" => "attn_v.bias",
        "self_attn.o_proj.weight" => "attn_output.weight",
        "mlp.gate_proj.weight" => "ffn_gate.weight",
        "mlp.up_proj.weight" => "ffn_up.weight",
        "mlp.down_proj.weight" => "ffn_down.weight",
        _ => return None,
    };
    Some(format!("blk.{layer}.{mapped}"))
}

/// `spec` as a GGUF file: a `.gguf` file, or a directory holding exactly one `.gguf` file and no `config.json`.
pub fn gguf_path(spec: &Path) -> Option<PathBuf> {
    if spec.is_file() {
        return (spec.extension().and_then(|e| e.to_str()) == Some("gguf")).then(|| spec.into());
    }
    if !spec.is_dir() || spec.join("config.json").exists() {
        return None;
    }
    let mut found = std::fs::read_dir(spec)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().and_then(|e| e.to_str()) == Some("gguf"));
    let first = found.next()?;
    found.next().is_none().then_some(first)
}

/// Loads a GGUF file: configuration, weights, tokenizer and chat template.
pub fn load(path: &Path) -> Result<ModelFiles, ModelError> {
    let file = GgufFile::open(path)?;
    let config = file.config()?;
    let tokenizer = gguf_tokenizer::tokenizer(&file)?;
    if tokenizer.vocab_size() > config.vocab_size {
        let reason = format!(
            "the tokenizer has {} tokens but the embedding {} rows",
            tokenizer.vocab_size(),
            config.vocab_size
        );
        return Err(invalid(path, reason));
    }
    let weights = file.weights(&config)?;
    let name = path
        .file_stem()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string());
    Ok(ModelFiles {
        config,
        weights,
        tokenizer,
        name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpermute_inverts_llama_cpp_permutation() {
        // llama.cpp: w.reshape(heads, 2, d/2, ...).swapaxes(1, 2): GGUF row (h, i, j) = HF row (h, j, i).
        let (heads, d) = (3, 8);
        let hf_rows: Vec<usize> = (0..heads * d).collect();
        let mut gguf = vec![0; heads * d];
        for h in 0..heads {
            for j in 0..2 {
                for i in 0..d / 2 {
                    gguf[h * d + 2 * i + j] = hf_rows[h * d + j * d / 2 + i];
                }
            }
        }
        let order = unpermute_rows(heads * d, heads);
        let back: Vec<usize> = order.iter().map(|&r| gguf[r as usize]).collect();
        assert_eq!(back, hf_rows);
    }

    #[test]
    fn names_map_both_ways_for_every_expected_tensor() {
        let config = crate::model::synthetic::synthetic_config("qwen2.5-0.5b").unwrap();
        for (hf, _) in expected_tensors(&config) {
            let g = gguf_name(&hf).unwrap_or_else(|| panic!("{hf}"));
            assert!(!g.contains("model."), "{g}");
        }
        assert_eq!(
            gguf_name("model.layers.11.mlp.down_proj.weight").as_deref(),
            Some("blk.11.ffn_down.weight")
        );
        assert_eq!(gguf_name("model.layers.0.rotary.inv_freq"), None);
    }

    /// A GGUF file of architecture `arch` holding one 4×32 `token_embd.weight` of type `dtype`.
    fn write_tiny(path: &Path, arch: &str, dtype: GgmlDType) {
        let zeros = Tensor::zeros((4, 32), candle_core::DType::F32, &Device::Cpu).unwrap();
        let t = QTensor::quantize(&zeros, dtype).unwrap();
        let arch = Value::String(arch.into());
        let mut f = File::create(path).unwrap();
        candle_core::quantized::gguf_file::write(
            &mut f,
            &[("general.architecture", &arch)],
            &[("token_embd.weight", &t)],
        )
        .unwrap();
    }

    #[test]
    fn bad_files_are_named_errors() {
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.gguf");
        std::fs::write(&junk, b"not a gguf file at all").unwrap();
        let msg = GgufFile::open(&junk).unwrap_err().to_string();
        assert!(msg.contains("junk.gguf") && msg.contains("GGUF"), "{msg}");

        // A valid header whose tensor data is cut off.
        let path = dir.path().join("cut.gguf");
        write_tiny(&path, "llama", GgmlDType::Q8_0);
        let full = std::fs::metadata(&path).unwrap().len();
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(full - 100).unwrap();
        let msg = GgufFile::open(&path).unwrap_err().to_string();
        assert!(
            msg.contains("truncated") && msg.contains("token_embd.weight"),
            "{msg}"
        );

        let dir2 = tempfile::tempdir().unwrap();
        assert_eq!(gguf_path(dir2.path()), None);
        std::fs::copy(&junk, dir2.path().join("m.gguf")).unwrap();
        assert_eq!(gguf_path(dir2.path()), Some(dir2.path().join("m.gguf")));
    }

    /// Found by the `gguf` fuzz target: a string whose length is past the end of the file made candle's reader
    /// ask for more memory than exists.
    #[test]
    fn fuzz_regression_a_length_past_the_end_is_a_malformed_header() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/fuzz/gguf-huge-string.gguf");
        let msg = GgufFile::open(&path).unwrap_err().to_string();
        assert!(
            msg.contains("gguf-huge-string.gguf") && msg.contains("malformed GGUF header"),
            "{msg}"
        );
    }

    /// Found by the `gguf` fuzz target: a tensor whose byte size overflows.
    #[test]
    fn fuzz_regression_a_tensor_size_that_overflows_is_refused() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/fuzz/gguf-size-overflow.gguf");
        let msg = GgufFile::open(&path).unwrap_err().to_string();
        assert!(msg.contains("gguf-size-overflow.gguf"), "{msg}");
    }

    /// Found by the `gguf` fuzz target: a block count in the millions made the expected tensor list exhaust
    /// memory before any weight was read.
    #[test]
    fn fuzz_regression_an_absurd_block_count_is_refused() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/fuzz/gguf-huge-block-count.gguf");
        let file = GgufFile::open(&path).unwrap();
        let msg = file.config().unwrap_err().to_string();
        assert!(msg.contains("at most"), "{msg}");
    }

    #[test]
    fn unknown_architecture_is_unsupported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.gguf");
        write_tiny(&path, "gemma3", GgmlDType::F32);
        let err = load(&path).unwrap_err();
        assert!(
            matches!(&err, ModelError::Unsupported(m) if m.contains("gemma3")),
            "{err}"
        );
    }
}
