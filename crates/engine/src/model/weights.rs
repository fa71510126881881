//! Safetensors weights: `model.safetensors`, or `model.safetensors.index.json` + shards, read into f32 tensors
//! on candle's CPU device (bf16/f16 upcast at load; [`ModelConfig::dtype`] keeps the checkpoint's dtype).
//!
//! Tensor names are Hugging Face's: `model.embed_tokens.weight`, `model.layers.{i}.input_layernorm.weight`,
//! `model.layers.{i}.self_attn.{q,k,v,o}_proj.weight` (+ `.bias` for q, k, v when
//! [`ModelConfig::attention_bias`]), `model.layers.{i}.post_attention_layernorm.weight`,
//! `model.layers.{i}.mlp.{gate,up,down}_proj.weight`, `model.norm.weight` and `lm_head.weight` (absent when tied).
//! Linear weights are `[out_features, in_features]`, as in PyTorch.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::quantized::QTensor;
use candle_core::safetensors::SliceSafetensors;
use candle_core::{DType as CandleDType, Device, Tensor};
use serde::Deserialize;

use super::{invalid, read_text, ModelConfig, ModelError};

/// Every tensor the architecture needs, with its shape, in checkpoint order (embedding, layers, norm, head).
pub fn expected_tensors(config: &ModelConfig) -> Vec<(String, Vec<usize>)> {
    let (h, i, v) = (
        config.hidden_size,
        config.intermediate_size,
        config.vocab_size,
    );
    let (q, kv) = (config.q_dim(), config.kv_dim());
    let mut out = vec![("model.embed_tokens.weight".to_string(), vec![v, h])];
    for l in 0..config.num_layers {
        let p = format!("model.layers.{l}");
        out.push((format!("{p}.input_layernorm.weight"), vec![h]));
        out.push((format!("{p}.self_attn.q_proj.weight"), vec![q, h]));
        out.push((format!("{p}.self_attn.k_proj.weight"), vec![kv, h]));
        out.push((format!("{p}.self_attn.v_proj.weight"), vec![kv, h]));
        if config.attention_bias {
            out.push((format!("{p}.self_attn.q_proj.bias"), vec![q]));
            out.push((format!("{p}.self_attn.k_proj.bias"), vec![kv]));
            out.push((format!("{p}.self_attn.v_proj.bias"), vec![kv]));
        }
        out.push((format!("{p}.self_attn.o_proj.weight"), vec![h, q]));
        out.push((format!("{p}.post_attention_layernorm.weight"), vec![h]));
        out.push((format!("{p}.mlp.gate_proj.weight"), vec![i, h]));
        out.push((format!("{p}.mlp.up_proj.weight"), vec![i, h]));
        out.push((format!("{p}.mlp.down_proj.weight"), vec![h, i]));
    }
    out.push(("model.norm.weight".to_string(), vec![h]));
    if !config.tie_word_embeddings {
        out.push(("lm_head.weight".to_string(), vec![v, h]));
    }
    out
}

/// A model's tensors by Hugging Face name: dense (f32 on the CPU when loaded from files) or, from GGUF files,
/// quantized blocks kept as they are.
#[derive(Clone)]
pub struct Weights {
    tensors: HashMap<String, Tensor>,
    quantized: HashMap<String, Arc<QTensor>>,
    /// Where the tensors came from, for error messages.
    source: String,
}

#[derive(Deserialize)]
struct ShardIndex {
    weight_map: HashMap<String, String>,
}

impl Weights {
    /// Loads `dir/model.safetensors`, or the shards listed by `dir/model.safetensors.index.json`, keeping the
    /// tensors of [`expected_tensors`] and checking each exists with the right shape. Errors name the bad file
    /// ([`ModelError::Invalid`]) or the absent tensor ([`ModelError::MissingTensor`]).
    pub fn load(dir: &Path, config: &ModelConfig) -> Result<Self, ModelError> {
        let expected = expected_tensors(config);
        let index_file = dir.join("model.safetensors.index.json");
        let single = dir.join("model.safetensors");
        // (file, the tensors the index says it holds)
        let files: Vec<(PathBuf, Vec<String>)> = if index_file.is_file() {
            shards(dir, &index_file)?
        } else if single.is_file() {
            vec![(single, Vec::new())]
        } else {
            return Err(ModelError::Missing {
                path: dir.join("model.safetensors"),
                hint: "no model.safetensors nor model.safetensors.index.json (only safetensors weights load)"
                    .into(),
            });
        };
        let wanted: HashMap<&str, &[usize]> = expected
            .iter()
            .map(|(n, s)| (n.as_str(), s.as_slice()))
            .collect();
        let mut tensors = HashMap::new();
        for (file, listed) in &files {
            let bytes = fs_err::read(file).map_err(|e| invalid(file, e))?;
            let st = SliceSafetensors::new(&bytes)
                .map_err(|e| invalid(file, format!("not a valid safetensors file: {e}")))?;
            let present: BTreeSet<String> = st.tensors().into_iter().map(|(n, _)| n).collect();
            if let Some(name) = listed.iter().find(|n| !present.contains(*n)) {
                let reason =
                    format!("the index lists tensor `{name}` in this shard, but it is absent");
                return Err(invalid(file, reason));
            }
            for name in present.iter().filter(|n| wanted.contains_key(n.as_str())) {
                let view = st.get(name).map_err(|e| invalid(file, e))?;
                if view.shape() != wanted[name.as_str()] {
                    let reason = format!(
                        "tensor `{name}` has shape {:?}, expected {:?} for this config",
                        view.shape(),
                        wanted[name.as_str()]
                    );
                    return Err(invalid(file, reason));
                }
                let tensor = st
                    .load(name, &Device::Cpu)
                    .and_then(|t| t.to_dtype(CandleDType::F32))
                    .map_err(|e| invalid(file, format!("tensor `{name}`: {e}")))?;
                if tensors.insert(name.clone(), tensor).is_some() {
                    return Err(invalid(
                        file,
                        format!("tensor `{name}` is also in another shard"),
                    ));
                }
            }
        }
        let source = files
            .iter()
            .map(|(f, _)| f.display().to_string())
            .collect::<Vec<_>>()
            .join(", ");
        if let Some((name, _)) = expected.iter().find(|(n, _)| !tensors.contains_key(n)) {
            return Err(ModelError::MissingTensor {
                name: name.clone(),
                files: source,
            });
        }
        Ok(Self {
            tensors,
            quantized: HashMap::new(),
            source,
        })
    }

    /// Wraps tensors built in memory.
    pub fn from_tensors(map: HashMap<String, Tensor>) -> Self {
        Self::from_parts(map, HashMap::new(), "in-memory tensors".into())
    }

    /// Dense and quantized tensors by name; `source` names where they came from in errors.
    pub fn from_parts(
        tensors: HashMap<String, Tensor>,
        quantized: HashMap<String, Arc<QTensor>>,
        source: String,
    ) -> Self {
        Self {
            tensors,
            quantized,
            source,
        }
    }

    /// The quantized tensor called `name`, if it is kept quantized.
    pub fn quantized(&self, name: &str) -> Option<&Arc<QTensor>> {
        self.quantized.get(name)
    }

    /// The dense tensor called `name`, or [`ModelError::MissingTensor`] (also for a quantized one: see
    /// [`Self::quantized`]).
    pub fn get(&self, name: &str) -> Result<&Tensor, ModelError> {
        self.tensors
            .get(name)
            .ok_or_else(|| ModelError::MissingTensor {
                name: name.to_string(),
                files: self.source.clone(),
            })
    }

    /// The tensor names, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self
            .tensors
            .keys()
            .chain(self.quantized.keys())
            .map(String::as_str)
            .collect();
        names.sort_unstable();
        names
    }

    /// How many tensors there are.
    pub fn len(&self) -> usize {
        self.tensors.len() + self.quantized.len()
    }

    /// Whether there are no tensors.
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty() && self.quantized.is_empty()
    }

    /// A copy whose dense matrices (2-D tensors with rows a multiple of the quantization block) are quantized to
    /// `dtype` on the CPU; vectors (norms, biases) stay f32. For small dense models read every token (a
    /// speculative draft), where reading 8-bit rows instead of f32 rows is most of the cost.
    pub fn quantize_dense(
        &self,
        dtype: candle_core::quantized::GgmlDType,
    ) -> Result<Self, ModelError> {
        let mut tensors = HashMap::new();
        let mut quantized = self.quantized.clone();
        for (name, t) in &self.tensors {
            let dims = t.dims();
            if dims.len() == 2 && dims[1].is_multiple_of(dtype.block_size()) {
                let q = QTensor::quantize(t, dtype).map_err(|e| {
                    ModelError::Unsupported(format!("quantizing `{name}` to {dtype:?}: {e}"))
                })?;
                quantized.insert(name.clone(), Arc::new(q));
            } else {
                tensors.insert(name.clone(), t.clone());
            }
        }
        Ok(Self {
            tensors,
            quantized,
            source: format!("{} (quantized to {dtype:?} at load)", self.source),
        })
    }

    /// Bytes held by the tensors.
    pub fn bytes(&self) -> usize {
        let dense: usize = self
            .tensors
            .values()
            .map(|t| t.elem_count() * t.dtype().size_in_bytes())
            .sum();
        dense
            + self
                .quantized
                .values()
                .map(|q| q.storage_size_in_bytes())
                .sum::<usize>()
    }

    /// Total number of elements (parameters).
    pub fn param_count(&self) -> u64 {
        let dense: u64 = self.tensors.values().map(|t| t.elem_count() as u64).sum();
        dense
            + self
                .quantized
                .values()
                .map(|q| q.shape().elem_count() as u64)
                .sum::<u64>()
    }
}

impl fmt::Debug for Weights {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Weights")
            .field("tensors", &self.tensors.len())
            .field("quantized", &self.quantized.len())
            .field("bytes", &self.bytes())
            .field("source", &self.source)
            .finish()
    }
}

/// The shard files of an index, each with the tensors the index puts in it, in file-name order.
fn shards(dir: &Path, index_file: &Path) -> Result<Vec<(PathBuf, Vec<String>)>, ModelError> {
    let text = read_text(index_file, "the shard index")?;
    let index: ShardIndex = serde_json::from_str(&text).map_err(|e| invalid(index_file, e))?;
    let mut by_file: HashMap<&str, Vec<String>> = HashMap::new();
    for (tensor, file) in &index.weight_map {
        by_file
            .entry(file.as_str())
            .or_default()
            .push(tensor.clone());
    }
    let mut names: Vec<&str> = by_file.keys().copied().collect();
    names.sort_unstable();
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        let plain = Path::new(name).components().count() == 1 && !name.contains("..");
        if !plain {
            return Err(invalid(
                index_file,
                format!("shard `{name}` is not a plain file name"),
            ));
        }
        let path = dir.join(name);
        if !path.is_file() {
            let hint = format!("shard listed in {}", index_file.display());
            return Err(ModelError::Missing { path, hint });
        }
        out.push((path, by_file.remove(name).unwrap_or_default()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::synthetic::synthetic_config;

    #[test]
    fn expected_tensors_add_up_to_param_count() {
        for name in ["tiny", "qwen2.5-0.5b", "llama-3-8b"] {
            let c = synthetic_config(name).unwrap();
            let list = expected_tensors(&c);
            let total: u64 = list
                .iter()
                .map(|(_, s)| s.iter().product::<usize>() as u64)
                .sum();
            assert_eq!(total, c.param_count(), "{name}");
            let has_head = list.iter().any(|(n, _)| n == "lm_head.weight");
            assert_eq!(has_head, !c.tie_word_embeddings, "{name}");
            let biases = list.iter().filter(|(n, _)| n.ends_with(".bias")).count();
            assert_eq!(
                biases,
                if c.attention_bias {
                    3 * c.num_layers
                } else {
                    0
                }
            );
        }
    }

    #[test]
    fn quantize_dense_quantizes_matrices_and_keeps_vectors() {
        use candle_core::quantized::GgmlDType;
        let config = synthetic_config("tiny").unwrap();
        let w = crate::model::synthetic::synthetic_weights(&config, 1).unwrap();
        let q = w.quantize_dense(GgmlDType::Q8_0).unwrap();
        assert_eq!(q.len(), w.len());
        assert!(q.quantized("model.layers.0.mlp.down_proj.weight").is_some());
        assert!(q.get("model.norm.weight").is_ok() && q.quantized("model.norm.weight").is_none());
        let name = "model.embed_tokens.weight";
        let back = q.quantized(name).unwrap().dequantize(&Device::Cpu).unwrap();
        let err = (back - w.get(name).unwrap())
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        // Q8_0: one scale per 32 values, 8 bits each: the error is under half a step of the largest value.
        assert!(err < 0.001, "{err}");
    }

    #[test]
    fn load_checks_shapes_and_presence() {
        let config = synthetic_config("tiny").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let err = Weights::load(dir.path(), &config).unwrap_err();
        assert!(matches!(err, ModelError::Missing { .. }), "{err}");

        let mut map: HashMap<String, Tensor> = expected_tensors(&config)
            .into_iter()
            .map(|(n, s)| {
                (
                    n,
                    Tensor::zeros(s, CandleDType::BF16, &Device::Cpu).unwrap(),
                )
            })
            .collect();
        let file = dir.path().join("model.safetensors");
        candle_core::safetensors::save(&map, &file).unwrap();
        let w = Weights::load(dir.path(), &config).unwrap();
        assert_eq!(w.len(), map.len());
        assert_eq!(w.param_count(), config.param_count());
        assert_eq!(w.bytes() as u64, 4 * config.param_count());
        assert_eq!(
            w.get("model.norm.weight").unwrap().dtype(),
            CandleDType::F32
        );

        let bad = Tensor::zeros((3, 64), CandleDType::F32, &Device::Cpu).unwrap();
        map.insert("lm_head.weight".into(), bad);
        candle_core::safetensors::save(&map, &file).unwrap();
        let msg = Weights::load(dir.path(), &config).unwrap_err().to_string();
        assert!(
            msg.contains("lm_head.weight") && msg.contains("[3, 64]"),
            "{msg}"
        );

        map.remove("lm_head.weight");
        candle_core::safetensors::save(&map, &file).unwrap();
        let err = Weights::load(dir.path(), &config).unwrap_err();
        assert!(matches!(&err, ModelError::MissingTensor { name, .. } if name == "lm_head.weight"));
        assert!(matches!(
            w.get("nope"),
            Err(ModelError::MissingTensor { .. })
        ));
    }
}
