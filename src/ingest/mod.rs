//! Ingestion: loaders turn uploads into [`document::NewDocument`]s, the [`chunker`] splits them into passages,
//! and the [`pipeline`] runs persisted, resumable jobs that store and index them.

pub mod chunker;
pub mod document;
pub mod loaders;
pub mod pipeline;
