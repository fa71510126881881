//! Ingestion: loaders turn uploads into [`NewDocument`](crate::store::NewDocument)s, the [`chunker`] splits them
//! into passages, and the [`pipeline`] runs persisted, resumable jobs that store and index them.

pub mod chunker;
pub mod loaders;
pub mod nesting;
pub mod pipeline;
