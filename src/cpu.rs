//! CPU-bound work of requests (BM25 search, embedding, vector search, tokenising prompts, parsing large bodies and
//! uploaded files) on blocking threads, at most one task per core at a time. Without the bound, 64 concurrent
//! retrievals became 64 runnable threads on two cores, and the async threads (which answer `/healthz` and accept
//! connections) got a time slice every 100-170 ms; a burst of 1,500 chat requests, each tokenised on a thread of
//! its own, stalled `/healthz` for about 150 ms. With the bound, the extra work waits in a queue and the async
//! threads keep their share. Work that mostly waits (for the generation engine) does not belong here: it would
//! hold a permit while the CPU is idle.

use std::sync::OnceLock;
use tokio::sync::Semaphore;

/// Runs `work` on a blocking thread once one of the per-core permits is free.
pub async fn run<T, F>(work: F) -> Result<T, tokio::task::JoinError>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    static PERMITS: OnceLock<Semaphore> = OnceLock::new();
    let permits = PERMITS.get_or_init(|| {
        Semaphore::new(std::thread::available_parallelism().map_or(2, usize::from))
    });
    let _permit = permits
        .acquire()
        .await
        .expect("the semaphore is never closed");
    tokio::task::spawn_blocking(work).await
}
