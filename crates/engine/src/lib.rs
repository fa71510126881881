//! The Engram inference engine: Llama-family models (Llama, Qwen2) on the CPU (candle-core) or CUDA (cudarc and our
//! NVRTC kernels), with prepacked prefill, a paged KV cache, continuous batching with Dynamic SplitFuse, sampling,
//! JSON-constrained decoding, H2O KV eviction, speculative decoding and teacher-forced scoring. It knows nothing of
//! HTTP, documents, retrieval or storage.
//!
//! Start an engine with [`open_engine`], then talk to it through the [`Generator`] trait. The model's internals are
//! in [`internals`], for tests and benchmarks only.
#![warn(missing_docs)]

pub mod internals;
pub mod metrics;

// The internal modules under their own names, for paths inside the crate (`crate::backend::...`).
#[cfg(test)]
use internals::prepack;
use internals::{
    backend, constrain, device, generator, h2o, hip, json_schema, kv_cache, llama, model, prefill,
    runner, sampling, score, score_segments, speculative, start, warmup,
};

// Starting an engine: its configuration, the device, and why it may fail.
pub use device::{CudaConfig, DecodeAttention, DeviceParseError, DeviceSpec};
pub use runner::{Engine, EngineConfig};
pub use speculative::{DraftWeights, SpeculationMethod, SpeculativeConfig};
pub use start::{open_engine, StartError};

// Generating: the trait the server talks to, its requests, events and errors.
pub use generator::{
    EngineError, EngineStats, FinishReason, GenerationEvent, GenerationRequest, Generator,
    TokenEvent, Usage,
};
pub use sampling::{SamplingError, SamplingParams};

// Shaping the output, the cache and attention: JSON constraints, H2O budgets, HiP sparse attention.
pub use constrain::{ConstraintError, JsonConstraint, JsonShape};
pub use h2o::{BudgetPart, KvBudget};
pub use hip::{AttentionMode, HipError, HipParams};
pub use json_schema::{shape_of, SchemaError};

// The model's text side: tokenizer, chat template, load errors.
pub use model::{ChatMessage, ModelConfig, ModelError, ModelFiles, ModelTokenizer};

// Scoring: teacher-forced log-probabilities, with segments encoded once.
pub use score::Scores;
pub use score_segments::SegmentedScoring;
