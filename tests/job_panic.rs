//! A panic inside an ingestion job (here: an extractor that panics on one passage) fails that job with a clear
//! message and every item settled, and the worker lives on to run the next job.

use std::sync::Arc;
use std::time::Duration;

use engram::graph::{GraphConfig, GraphIndex};
use engram::index::TextIndex;
use engram::ingest::chunker::ChunkConfig;
use engram::ingest::pipeline::Pipeline;
use engram::openie::{Extraction, Extractor, OpenIeError, PassageInput};
use engram::store::{JobStatus, NewDocument, Store};
use tokio_util::sync::CancellationToken;

/// Panics on any passage that mentions "boom"; finds nothing elsewhere.
#[derive(Debug)]
struct PanicsOnBoom;

impl Extractor for PanicsOnBoom {
    fn name(&self) -> &str {
        "panics-on-boom"
    }

    fn extract(&self, passages: &[PassageInput<'_>]) -> Result<Vec<Extraction>, OpenIeError> {
        if passages.iter().any(|p| p.text.contains("boom")) {
            panic!("the extractor hit a boom");
        }
        Ok(passages.iter().map(|_| Extraction::default()).collect())
    }
}

fn doc(title: &str, text: &str) -> NewDocument {
    NewDocument {
        title: title.into(),
        text: text.into(),
        metadata: serde_json::Value::Null,
        source: None,
        media_type: "text/plain".into(),
    }
}

async fn settled(store: &Store, job: &str) -> engram::store::JobRecord {
    for _ in 0..600 {
        let record = store.get_job(job).await.unwrap().unwrap();
        if matches!(record.status, JobStatus::Completed | JobStatus::Failed) {
            return record;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("job {job} never settled");
}

#[tokio::test]
async fn a_panicking_job_fails_cleanly_and_the_worker_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_sqlite(dir.path()).await.unwrap();
    let index = Arc::new(TextIndex::open(&dir.path().join("tantivy")).unwrap());
    let graph = GraphIndex::open(
        store.clone(),
        Arc::new(PanicsOnBoom),
        None,
        GraphConfig::default(),
    )
    .await
    .unwrap();
    let pipeline = Pipeline::new(
        store.clone(),
        index,
        None,
        Some(graph),
        ChunkConfig::default(),
    );
    let shutdown = CancellationToken::new();
    let worker = tokio::spawn(pipeline.clone().run_worker(shutdown.clone()));

    let bad = pipeline
        .submit(&[
            doc("Calm", "A quiet harbour town."),
            doc("Loud", "Then came the boom."),
        ])
        .await
        .unwrap();
    let record = settled(&store, &bad).await;
    assert_eq!(record.status, JobStatus::Failed, "{record:?}");
    let message = record.error.clone().unwrap_or_default();
    assert!(
        message.contains("panicked") || message.contains("boom"),
        "{message}"
    );
    assert_eq!(record.counts.pending, 0, "nothing left pending: {record:?}");

    let good = pipeline
        .submit(&[doc("Later", "A later, ordinary document.")])
        .await
        .unwrap();
    let record = settled(&store, &good).await;
    assert_eq!(record.status, JobStatus::Completed, "{record:?}");
    assert_eq!(record.counts.done, 1);
    assert!(!worker.is_finished(), "the worker outlived the panic");
    shutdown.cancel();
    worker.await.unwrap();
}
