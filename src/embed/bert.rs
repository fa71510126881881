//! [`BertEmbedder`]: a BERT-family sentence encoder (all-MiniLM-L6-v2 by default) on candle-core, with the
//! sentence-transformers recipe: tokenise with truncation, encode, mean-pool over real tokens, L2-normalise.

use std::path::Path;

use candle_core::{Device, Tensor};
use tokenizers::{Encoding, Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

use super::config::{invalid, missing, read_settings, required_file};
use super::model::BertModel;
use super::pooling::{l2_normalize, mean_pool};
use super::{EmbedError, Embedder, Embedding};

/// A BERT sentence embedder loaded from a model directory in Hugging Face / sentence-transformers layout
/// (`config.json`, `model.safetensors`, `tokenizer.json`, optionally `1_Pooling/config.json` and
/// `sentence_bert_config.json`), computed on the CPU in f32.
///
/// Inputs are sorted by token length and encoded in batches of `batch_size`, each padded to its longest input, so
/// that an input's vector does not depend on what it is batched with (up to float rounding). The work uses all
/// cores: candle runs matrix products on rayon's global pool with `RAYON_NUM_THREADS` threads (one per core when
/// unset), and the fused element-wise kernels (soft-max, GELU, LayerNorm) split their rows over as many threads.
pub struct BertEmbedder {
    name: String,
    model: BertModel,
    tokenizer: Tokenizer,
    max_tokens: usize,
    lowercase: bool,
    batch_size: usize,
}

impl std::fmt::Debug for BertEmbedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BertEmbedder")
            .field("name", &self.name)
            .field("dimension", &self.model.hidden_size())
            .field("max_tokens", &self.max_tokens)
            .field("batch_size", &self.batch_size)
            .finish_non_exhaustive()
    }
}

impl BertEmbedder {
    /// Loads the model in `dir`; `batch_size` is the number of inputs encoded together (0 is taken as 1).
    ///
    /// The maximum input length is `sentence_bert_config.json`'s `max_seq_length` (256 for all-MiniLM-L6-v2), or
    /// `max_position_embeddings` without that file. Errors: [`EmbedError::ModelMissing`] when `dir` or a required
    /// file is absent (its hint says to run `make setup`), [`EmbedError::InvalidModel`] when a file cannot be used
    /// (unsupported architecture or pooling, wrong tensor shapes, unreadable tokenizer).
    pub fn load(dir: &Path, batch_size: usize) -> Result<Self, EmbedError> {
        if !dir.is_dir() {
            return Err(missing(dir, "the model directory"));
        }
        let settings = read_settings(dir)?;
        let weights = required_file(dir, "model.safetensors")?;
        let tokenizer_file = required_file(dir, "tokenizer.json")?;

        let mut tokenizer = Tokenizer::from_file(&tokenizer_file)
            .map_err(|e| invalid(&tokenizer_file, e.to_string()))?;
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: settings.max_tokens,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
                direction: TruncationDirection::Right,
            }))
            .map_err(|e| invalid(&tokenizer_file, e.to_string()))?;
        let vocab = tokenizer.get_vocab_size(true);
        if vocab > settings.bert.vocab_size {
            return Err(invalid(
                &tokenizer_file,
                format!(
                    "the tokenizer has {vocab} tokens but the model only {}",
                    settings.bert.vocab_size
                ),
            ));
        }

        let model = BertModel::load(&weights, &settings.bert)?;
        let name = dir
            .file_name()
            .map_or_else(|| "bert".to_owned(), |n| n.to_string_lossy().into_owned());
        tracing::debug!(
            model = %name,
            dimension = model.hidden_size(),
            max_tokens = settings.max_tokens,
            batch_size,
            threads = candle_core::utils::get_num_threads(),
            "embedding model loaded"
        );
        Ok(Self {
            name,
            model,
            tokenizer,
            max_tokens: settings.max_tokens,
            lowercase: settings.lowercase,
            batch_size: batch_size.max(1),
        })
    }

    /// The number of inputs encoded together.
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// Tokenises `texts` with truncation at `max_tokens` (special tokens included) and no padding.
    fn tokenize(&self, texts: &[&str]) -> Result<Vec<Encoding>, EmbedError> {
        let result = if self.lowercase {
            self.tokenizer.encode_batch_fast(
                texts.iter().map(|t| t.to_lowercase()).collect::<Vec<_>>(),
                true,
            )
        } else {
            self.tokenizer.encode_batch_fast(texts.to_vec(), true)
        };
        result.map_err(|e| EmbedError::Tokenizer(e.to_string()))
    }

    /// Encodes one batch of token sequences (padded here to the longest) into unit vectors.
    fn embed_batch(&self, batch: &[&Encoding]) -> candle_core::Result<Vec<Vec<f32>>> {
        let seq = batch.iter().map(|e| e.len()).max().unwrap_or(0).max(1);
        let mut ids = vec![0u32; batch.len() * seq];
        let mut mask = vec![0f32; batch.len() * seq];
        for (row, encoding) in batch.iter().enumerate() {
            let start = row * seq;
            ids[start..start + encoding.len()].copy_from_slice(encoding.get_ids());
            mask[start..start + encoding.len()].fill(1.0);
        }
        let ids = Tensor::from_vec(ids, (batch.len(), seq), &Device::Cpu)?;
        let mask = Tensor::from_vec(mask, (batch.len(), seq), &Device::Cpu)?;
        let hidden = self.model.forward(&ids, &mask)?;
        l2_normalize(&mean_pool(&hidden, &mask)?)?.to_vec2()
    }
}

impl Embedder for BertEmbedder {
    fn model_name(&self) -> &str {
        &self.name
    }

    fn dimension(&self) -> usize {
        self.model.hidden_size()
    }

    fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    fn embed(&self, texts: &[&str]) -> Result<Vec<Embedding>, EmbedError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let encodings = self.tokenize(texts)?;
        let mut order: Vec<usize> = (0..encodings.len()).collect();
        order.sort_by_key(|&i| encodings[i].len());

        let mut out: Vec<Option<Embedding>> = vec![None; encodings.len()];
        for chunk in order.chunks(self.batch_size) {
            let batch: Vec<&Encoding> = chunk.iter().map(|&i| &encodings[i]).collect();
            let vectors = self
                .embed_batch(&batch)
                .map_err(|e| EmbedError::Compute(e.to_string()))?;
            for (&i, vector) in chunk.iter().zip(vectors) {
                let encoding = &encodings[i];
                out[i] = Some(Embedding {
                    vector,
                    tokens: encoding.len(),
                    truncated: !encoding.get_overflowing().is_empty(),
                });
            }
        }
        out.into_iter()
            .map(|e| e.ok_or_else(|| EmbedError::Compute("an input was not embedded".to_owned())))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{tiny_model, TinyModel};
    use super::*;

    fn cosine(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    #[test]
    fn loads_tiny_model_and_embeds_unit_vectors() {
        let dir = tiny_model(&TinyModel::default());
        let embedder = BertEmbedder::load(dir.path(), 4).unwrap();
        assert_eq!(embedder.dimension(), 8);
        assert_eq!(embedder.max_tokens(), 16);
        assert_eq!(embedder.batch_size(), 4);
        let out = embedder
            .embed(&["the cat sat on the mat", "a dog", "", "Dogs!"])
            .unwrap();
        assert_eq!(out.len(), 4);
        for e in &out {
            assert_eq!(e.vector.len(), 8);
            let norm: f32 = e.vector.iter().map(|v| v * v).sum::<f32>().sqrt();
            assert!((norm - 1.0).abs() < 1e-5, "norm {norm}");
            assert!(!e.truncated);
        }
        assert_eq!(
            out.iter().map(|e| e.tokens).collect::<Vec<_>>(),
            vec![8, 4, 2, 5]
        );
        assert!(
            cosine(&out[0].vector, &out[1].vector) < 0.9999,
            "different inputs give different vectors"
        );
    }

    #[test]
    fn batched_equals_single_and_order_is_kept() {
        let dir = tiny_model(&TinyModel::default());
        let embedder = BertEmbedder::load(dir.path(), 3).unwrap();
        let texts = [
            "a dog",
            "the cat sat on the mat on the mat",
            "",
            "cats sat",
            "the dog sat",
            "mat",
        ];
        let batched = embedder.embed(&texts).unwrap();
        for (text, together) in texts.iter().zip(&batched) {
            let alone = embedder.embed(&[text]).unwrap().remove(0);
            assert_eq!(alone.tokens, together.tokens);
            let diff = max_abs_diff(&alone.vector, &together.vector);
            assert!(diff < 1e-5, "{text:?}: alone and batched differ by {diff}");
        }
        let reversed: Vec<&str> = texts.iter().rev().copied().collect();
        let again = embedder.embed(&reversed).unwrap();
        for (a, b) in batched.iter().zip(again.iter().rev()) {
            assert!(max_abs_diff(&a.vector, &b.vector) < 1e-5);
        }
    }

    #[test]
    fn empty_input_list_gives_empty_output() {
        let dir = tiny_model(&TinyModel::default());
        let embedder = BertEmbedder::load(dir.path(), 2).unwrap();
        assert!(embedder.embed(&[]).unwrap().is_empty());
    }

    #[test]
    fn long_inputs_are_truncated_at_max_tokens() {
        let dir = tiny_model(&TinyModel {
            max_seq_length: Some(6),
            ..TinyModel::default()
        });
        let embedder = BertEmbedder::load(dir.path(), 8).unwrap();
        assert_eq!(embedder.max_tokens(), 6);
        let out = embedder
            .embed(&["the cat sat on the mat", "the cat sat on", "the cat sat"])
            .unwrap();
        assert_eq!((out[0].tokens, out[0].truncated), (6, true));
        assert_eq!((out[1].tokens, out[1].truncated), (6, false));
        assert_eq!((out[2].tokens, out[2].truncated), (5, false));
        let prefix = embedder.embed(&["the cat sat on"]).unwrap();
        assert!(
            max_abs_diff(&out[0].vector, &prefix[0].vector) < 1e-5,
            "truncation keeps the first tokens"
        );
    }

    #[test]
    fn max_tokens_defaults_to_max_position_embeddings() {
        let dir = tiny_model(&TinyModel {
            max_seq_length: None,
            ..TinyModel::default()
        });
        assert_eq!(BertEmbedder::load(dir.path(), 1).unwrap().max_tokens(), 32);
    }

    #[test]
    fn prefixed_and_half_precision_weights_give_the_same_vectors() {
        let texts = ["the cat sat on the mat", "a dog"];
        let plain = tiny_model(&TinyModel::default());
        let reference = BertEmbedder::load(plain.path(), 2)
            .unwrap()
            .embed(&texts)
            .unwrap();
        let prefixed = tiny_model(&TinyModel {
            prefix: "bert.",
            ..TinyModel::default()
        });
        let same = BertEmbedder::load(prefixed.path(), 2)
            .unwrap()
            .embed(&texts)
            .unwrap();
        assert_eq!(reference, same);
        let half = tiny_model(&TinyModel {
            dtype: candle_core::DType::F16,
            ..TinyModel::default()
        });
        let approx = BertEmbedder::load(half.path(), 2)
            .unwrap()
            .embed(&texts)
            .unwrap();
        for (a, b) in reference.iter().zip(&approx) {
            assert!(cosine(&a.vector, &b.vector) > 0.99);
        }
    }

    #[test]
    fn missing_directory_or_file_is_model_missing_with_setup_hint() {
        let root = tempfile::tempdir().unwrap();
        let err = BertEmbedder::load(&root.path().join("nope"), 8).unwrap_err();
        assert!(
            matches!(&err, EmbedError::ModelMissing { hint, .. } if hint.contains("make setup")),
            "{err}"
        );
        for file in ["config.json", "model.safetensors", "tokenizer.json"] {
            let dir = tiny_model(&TinyModel::default());
            std::fs::remove_file(dir.path().join(file)).unwrap();
            let err = BertEmbedder::load(dir.path(), 8).unwrap_err();
            assert!(
                matches!(&err, EmbedError::ModelMissing { hint, .. } if hint.contains(file)),
                "{err}"
            );
        }
    }

    #[test]
    fn non_mean_pooling_is_rejected() {
        let dir = tiny_model(&TinyModel {
            pooling: "pooling_mode_cls_token",
            ..TinyModel::default()
        });
        let err = BertEmbedder::load(dir.path(), 8).unwrap_err();
        assert!(
            matches!(&err, EmbedError::InvalidModel { reason, .. } if reason.contains("mean pooling")),
            "{err}"
        );
    }

    #[test]
    fn wrong_tensor_shape_and_activation_are_invalid() {
        let dir = tiny_model(&TinyModel {
            hidden_act: "relu",
            ..TinyModel::default()
        });
        let err = BertEmbedder::load(dir.path(), 8).unwrap_err();
        assert!(
            matches!(&err, EmbedError::InvalidModel { reason, .. } if reason.contains("hidden_act")),
            "{err}"
        );
        let dir = tiny_model(&TinyModel {
            intermediate_in_config: 12,
            ..TinyModel::default()
        });
        let err = BertEmbedder::load(dir.path(), 8).unwrap_err();
        assert!(
            matches!(&err, EmbedError::InvalidModel { reason, .. } if reason.contains("shape")),
            "{err}"
        );
    }
}
