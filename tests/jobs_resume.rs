//! Jobs persist in the database and resume after a restart; documents stored but not indexed when a process died
//! are indexed at the next start.

mod common;

use common::{Db, TestApp};
use engram::ingest::pipeline::content_hash;
use engram::store::NewDocument;
use engram::store::{ItemStatus, JobStatus, Store};

fn doc(title: &str, text: &str) -> NewDocument {
    NewDocument {
        title: title.into(),
        text: text.into(),
        metadata: serde_json::Value::Null,
        source: None,
        media_type: "text/plain".into(),
    }
}

async fn interrupted_work_resumes_after_restart(db: Db) {
    // Start once to create the schema, then stop: from here on no worker runs until the restart.
    let first = TestApp::start(db, |_| {}).await;
    let (dir, url, schema) = first.stop().await;
    let store = match &url {
        Some(u) => Store::connect(u).await.unwrap(),
        None => Store::open_sqlite(dir.path()).await.unwrap(),
    };

    // A job that was interrupted after its first item: item 0 stored, items 1 and 2 pending, status running.
    let docs = vec![
        doc("Otter", "Otters are semi-aquatic mammals of rivers."),
        doc("Heron", "Herons wade in shallow water to catch fish."),
        doc(
            "Newt",
            "Newts are amphibians that return to ponds to breed.",
        ),
    ];
    let job = store.create_job(&docs).await.unwrap();
    let mut tx = store.begin().await.unwrap();
    let outcome = Store::insert_document(
        &mut tx,
        &docs[0],
        &content_hash(&docs[0]),
        &[(0, docs[0].text.len())],
    )
    .await
    .unwrap();
    let engram::store::InsertOutcome::Inserted { document_id, .. } = outcome else {
        panic!("new document")
    };
    Store::finish_item(&mut tx, &job, 0, ItemStatus::Done, Some(&document_id), None)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    store
        .set_job_status(&job, JobStatus::Running, None)
        .await
        .unwrap();

    // A queued job nobody started.
    let queued = store
        .create_job(&[doc("Kingfisher", "Kingfishers dive for minnows.")])
        .await
        .unwrap();
    store.close().await;

    let t = TestApp::start_in(db, dir, url, schema, |_| {}).await;
    let resumed = t.wait_job(&job).await;
    assert_eq!(resumed["status"], "completed", "{resumed}");
    assert_eq!(resumed["counts"]["done"], 3);
    assert_eq!(resumed["counts"]["pending"], 0);
    let q = t.wait_job(&queued).await;
    assert_eq!(q["counts"]["done"], 1);
    assert_eq!(t.app.store.counts().await.unwrap().0, 4);
    // Item 0 was stored before the "crash" but never indexed: recovery indexed it.
    let hits = t.retrieve("semi-aquatic mammals", 1).await;
    assert_eq!(hits[0]["document_id"], document_id.as_str());
    assert_eq!(t.app.text_index_len(), 4);
    t.finish().await;
}
both_backends!(
    interrupted_work_resumes_after_restart,
    interrupted_work_resumes_after_restart
);

async fn reindex_rebuilds_from_the_store(db: Db) {
    let t = TestApp::start(db, |_| {}).await;
    t.ingest(&serde_json::json!([
        {"title": "Moss", "text": "Moss grows on the north side of stones."},
        {"title": "Lichen", "text": "Lichen is a partnership of fungus and alga."},
    ]))
    .await;
    t.app.pipeline.text_index().clear().unwrap();
    t.app.pipeline.text_index().commit().unwrap();
    assert_eq!(t.app.text_index_len(), 0);
    assert!(t.retrieve("fungus", 3).await.is_empty());
    assert_eq!(t.app.pipeline.reindex_all().await.unwrap(), 2);
    assert_eq!(t.retrieve("fungus alga", 3).await[0]["title"], "Lichen");
    t.finish().await;
}
both_backends!(
    reindex_rebuilds_from_the_store,
    reindex_rebuilds_from_the_store
);

/// A store fault injected on one document (a trigger on SQLite, a check constraint on PostgreSQL) fails the batch
/// transaction; the pipeline falls back to one transaction per item, so the good items are stored and the bad one is
/// reported in the job.
async fn a_failing_item_does_not_hold_back_its_batch(db: Db) {
    let t = TestApp::start(db, |_| {}).await;
    let fault = match db {
        Db::Sqlite => {
            "CREATE TRIGGER refuse_bad BEFORE INSERT ON documents WHEN NEW.title = 'Bad' \
                       BEGIN SELECT RAISE(ABORT, 'injected fault'); END"
        }
        Db::Postgres => "ALTER TABLE documents ADD CONSTRAINT refuse_bad CHECK (title <> 'Bad')",
    };
    sqlx::query(fault)
        .execute(t.app.store.pool())
        .await
        .unwrap();
    let job = t
        .ingest(&serde_json::json!([
            {"title": "Good one", "text": "Stored despite its neighbour."},
            {"title": "Bad", "text": "The store refuses this one."},
            {"title": "Good two", "text": "Also stored."},
        ]))
        .await;
    assert_eq!(job["status"], "completed", "{job}");
    assert_eq!(job["counts"]["done"], 2, "{job}");
    assert_eq!(job["counts"]["failed"], 1, "{job}");
    assert_eq!(job["errors"][0]["index"], 1);
    assert_eq!(job["errors"][0]["code"], "storage_error");
    assert_eq!(t.app.store.counts().await.unwrap().0, 2);
    assert_eq!(t.app.text_index_len(), 2);
    t.finish().await;
}
both_backends!(
    a_failing_item_does_not_hold_back_its_batch,
    a_failing_item_does_not_hold_back_its_batch
);
