//! The LLM inference engine: Llama-family models written once over a [`backend`] trait (CPU through candle-core
//! now, CUDA next), prepacked prefill ([`prepack`]), a paged KV cache ([`kv_cache`]), continuous batching with
//! Dynamic SplitFuse ([`scheduler`]), sampling ([`sampling`]) and speculative decoding ([`speculative`]).

pub mod backend;
pub mod bench;
pub mod constrain;
pub mod device;
pub mod generator;
pub mod h2o;
pub mod h2o_bench;
pub mod h2o_decode;
pub mod json_schema;
pub mod kv_cache;
pub mod llama;
pub mod model;
pub mod prefill;
pub mod prepack;
pub mod runner;
pub mod sampling;
pub mod scheduler;
pub mod score;
pub mod score_segments;
pub mod spec_bench;
pub mod speculative;
pub mod warmup;
