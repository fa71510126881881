//! Engram: a retrieval-augmented multi-hop question-answering server.
//!
//! The crate is organised by domain noun (see `ARCHITECTURE.md`):
//! - [`config`]: typed, layered configuration;
//! - [`store`]: the database (SQLite or PostgreSQL through sqlx), the source of truth;
//! - [`ingest`]: loaders, chunker and the resumable job pipeline;
//! - [`index`]: the BM25 index (tantivy), rebuildable from the store;
//! - the LLM inference engine is its own crate, `engram_engine` (`crates/engine`);
//! - [`openie`]: open information extraction (extractor trait, precomputed import, non-LLM fallback);
//! - [`graph`]: the knowledge graph (phrase and passage nodes) and Personalized PageRank;
//! - [`retrieve`]: retrievers behind one trait;
//! - [`draft`]: `engram draft train` (FastDraft: a draft model trained for the served model; `engram_draft`);
//! - [`eval`]: the retrieval evaluation harness (MuSiQue and HotpotQA styles);
//! - [`server`]: the HTTP API (axum);
//! - [`app`]: wiring of the above into one running application.
//!
//! ```
//! use engram::ingest::chunker::{chunk_text, ChunkConfig};
//! let chunks = chunk_text("One sentence. Another one.", &ChunkConfig::default());
//! assert_eq!(chunks.len(), 1);
//! ```
#![warn(missing_docs)]

pub mod app;
pub mod attribution;
pub mod config;
pub mod cpu;
pub mod draft;
pub mod embed;
pub mod eval;
pub mod graph;
pub mod index;
pub mod ingest;
pub mod metrics;
pub mod openie;
pub mod qa;
pub mod retrieve;
pub mod server;
pub mod store;
