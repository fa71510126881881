//! Admission control for generation: a [`Generator`] wrapper that counts every request from its submission until
//! its stream ends (commands still in the engine's channel included, which the engine's own waiting count does
//! not see yet) and refuses a request past the limit with [`EngineError::QueueFull`] (429 `queue_full` with
//! `Retry-After`).

use engram_engine::{
    EngineError, EngineStats, GenerationEvent, GenerationRequest, Generator, ModelTokenizer,
    Scores, SegmentedScoring,
};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

/// A generator that admits at most `limit` requests at once.
#[derive(Debug)]
pub struct Admitted {
    inner: Arc<dyn Generator>,
    in_flight: Arc<AtomicUsize>,
    limit: usize,
}

impl Admitted {
    /// Wraps `inner`, admitting at most `limit` requests at once (the engine's running plus waiting capacity).
    pub fn new(inner: Arc<dyn Generator>, limit: usize) -> Self {
        Self {
            inner,
            in_flight: Arc::new(AtomicUsize::new(0)),
            limit,
        }
    }

    /// Requests admitted and not finished.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }
}

/// One admitted request's place, given back when dropped.
struct Slot(Arc<AtomicUsize>);

impl Slot {
    fn take(counter: &Arc<AtomicUsize>, limit: usize) -> Option<Slot> {
        counter
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot(counter.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Generator for Admitted {
    fn model_name(&self) -> &str {
        self.inner.model_name()
    }

    fn tokenizer(&self) -> &ModelTokenizer {
        self.inner.tokenizer()
    }

    fn max_context(&self) -> usize {
        self.inner.max_context()
    }

    fn device(&self) -> &str {
        self.inner.device()
    }

    /// Admits the request (or answers `QueueFull`), then forwards its events until it ends or the caller drops
    /// the stream (which drops the engine's stream, cancelling the request); the slot is held until then.
    fn submit(
        &self,
        request: GenerationRequest,
    ) -> Result<UnboundedReceiver<GenerationEvent>, EngineError> {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return self.inner.submit(request); // no runtime to forward on: not counted
        };
        let slot =
            Slot::take(&self.in_flight, self.limit).ok_or(EngineError::QueueFull(self.limit))?;
        let mut events = self.inner.submit(request)?;
        let (tx, rx) = unbounded_channel();
        runtime.spawn(async move {
            let _slot = slot;
            loop {
                tokio::select! {
                    event = events.recv() => {
                        let Some(event) = event else { break };
                        let last = !matches!(event, GenerationEvent::Token(_));
                        if tx.send(event).is_err() || last {
                            break;
                        }
                    }
                    _ = tx.closed() => break,
                }
            }
        });
        Ok(rx)
    }

    fn stats(&self) -> EngineStats {
        self.inner.stats()
    }

    fn score(&self, pairs: Vec<(Vec<u32>, Vec<u32>)>) -> Result<Scores, EngineError> {
        self.inner.score(pairs)
    }

    fn score_segmented(&self, request: SegmentedScoring) -> Result<Scores, EngineError> {
        self.inner.score_segmented(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use tokio::sync::mpsc::UnboundedSender;

    /// A generator whose requests never end until the test says so.
    #[derive(Debug, Default)]
    struct Stalled {
        senders: Mutex<Vec<UnboundedSender<GenerationEvent>>>,
    }

    impl Generator for Stalled {
        fn model_name(&self) -> &str {
            "stalled"
        }
        fn tokenizer(&self) -> &ModelTokenizer {
            unimplemented!("not used")
        }
        fn max_context(&self) -> usize {
            16
        }
        fn submit(
            &self,
            _: GenerationRequest,
        ) -> Result<UnboundedReceiver<GenerationEvent>, EngineError> {
            let (tx, rx) = unbounded_channel();
            self.senders.lock().unwrap().push(tx);
            Ok(rx)
        }
        fn stats(&self) -> EngineStats {
            EngineStats::default()
        }
        fn score(&self, _: Vec<(Vec<u32>, Vec<u32>)>) -> Result<Scores, EngineError> {
            Err(EngineError::Scoring("not used".into()))
        }
        fn score_segmented(&self, _: SegmentedScoring) -> Result<Scores, EngineError> {
            Err(EngineError::Scoring("not used".into()))
        }
    }

    fn request() -> GenerationRequest {
        GenerationRequest {
            prompt: vec![1, 2, 3],
            params: engram_engine::SamplingParams::default(),
            constraint: None,
            kv_budget: None,
            attention: None,
        }
    }

    async fn settle(g: &Admitted, want: usize) {
        for _ in 0..1000 {
            if g.in_flight() == want {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("in flight stayed {} (want {want})", g.in_flight());
    }

    #[tokio::test]
    async fn the_limit_counts_requests_until_their_streams_end() {
        let inner = Arc::new(Stalled::default());
        let g = Admitted::new(inner.clone(), 2);
        let first = g.submit(request()).unwrap();
        let _second = g.submit(request()).unwrap();
        assert!(matches!(
            g.submit(request()),
            Err(EngineError::QueueFull(2))
        ));
        drop(first); // the client went away
        settle(&g, 1).await;
        let mut third = g.submit(request()).unwrap();
        let done = GenerationEvent::Done {
            reason: engram_engine::FinishReason::Stop,
            usage: engram_engine::Usage::default(),
        };
        inner.senders.lock().unwrap()[2].send(done).unwrap();
        assert!(matches!(
            third.recv().await,
            Some(GenerationEvent::Done { .. })
        ));
        settle(&g, 1).await;
    }
}
