//! Which loop multiplies K-quant weights at decode: [`super::kdot`] or candle's own `QMatMul`. Neither is faster on
//! every CPU: on a Xeon VM kdot decoded 1.9× faster than candle's loop, and on an AMD EPYC VM candle's loop was the
//! faster by 1.2–1.3× (BENCHMARKS.md). So the process measures both on its first decode products, in turn. Each is
//! timed per byte of weights it reads, since the layers' weights differ in size. After [`TRIAL_CALLS`] products
//! the process keeps the faster loop.

use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::Mutex;

/// Products timed before the choice, half with each loop.
pub const TRIAL_CALLS: usize = 512;

/// A loop for K-quant decode products.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KLoop {
    /// [`super::kdot`]: block by block, the weight stream prefetched ahead.
    Kdot,
    /// candle's `QMatMul`: whole rows per call.
    Candle,
}

/// The timings of a trial: nanoseconds and weight bytes per loop.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Trial {
    kdot: (f64, f64),
    candle: (f64, f64),
    calls: usize,
}

impl Trial {
    /// The loop that call number `call` of the trial uses: they alternate.
    pub fn loop_for(call: usize) -> KLoop {
        if call.is_multiple_of(2) {
            KLoop::Kdot
        } else {
            KLoop::Candle
        }
    }

    /// Adds one timed product; returns the choice once `TRIAL_CALLS` products are in.
    pub fn record(&mut self, which: KLoop, nanos: f64, bytes: f64) -> Option<KLoop> {
        let slot = match which {
            KLoop::Kdot => &mut self.kdot,
            KLoop::Candle => &mut self.candle,
        };
        slot.0 += nanos;
        slot.1 += bytes;
        self.calls += 1;
        (self.calls >= TRIAL_CALLS).then(|| self.faster())
    }

    /// The loop with the fewer nanoseconds per byte so far (kdot on a tie or without data).
    pub fn faster(&self) -> KLoop {
        let rate = |(ns, bytes): (f64, f64)| {
            if bytes > 0.0 {
                ns / bytes
            } else {
                f64::INFINITY
            }
        };
        if rate(self.candle) < rate(self.kdot) {
            KLoop::Candle
        } else {
            KLoop::Kdot
        }
    }
}

/// 0 while the trial runs, then 1 + the chosen loop.
static CHOSEN: AtomicU8 = AtomicU8::new(0);
static CALLS: AtomicUsize = AtomicUsize::new(0);
static TRIAL: Mutex<Trial> = Mutex::new(Trial {
    kdot: (0.0, 0.0),
    candle: (0.0, 0.0),
    calls: 0,
});

/// The loop for the next product, and whether it is part of the trial (then report it with [`report`]).
pub fn next_loop() -> (KLoop, bool) {
    match CHOSEN.load(Ordering::Relaxed) {
        1 => (KLoop::Kdot, false),
        2 => (KLoop::Candle, false),
        _ => (Trial::loop_for(CALLS.fetch_add(1, Ordering::Relaxed)), true),
    }
}

/// Reports a timed trial product; the last one of the trial makes the choice.
pub fn report(which: KLoop, nanos: f64, bytes: f64) {
    let mut trial = TRIAL.lock().unwrap_or_else(|e| e.into_inner());
    if CHOSEN.load(Ordering::Relaxed) != 0 {
        return;
    }
    if let Some(choice) = trial.record(which, nanos, bytes) {
        let per_gb = |(ns, bytes): (f64, f64)| ns / bytes.max(1.0);
        tracing::info!(
            chosen = ?choice,
            kdot_ns_per_byte = per_gb(trial.kdot),
            candle_ns_per_byte = per_gb(trial.candle),
            "K-quant decode loop chosen by timing"
        );
        CHOSEN.store(if choice == KLoop::Kdot { 1 } else { 2 }, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_trial_alternates_and_keeps_the_loop_with_fewer_nanoseconds_per_byte() {
        assert_eq!(Trial::loop_for(0), KLoop::Kdot);
        assert_eq!(Trial::loop_for(1), KLoop::Candle);
        let mut t = Trial::default();
        let mut choice = None;
        for call in 0..TRIAL_CALLS {
            assert!(choice.is_none(), "decided before the trial's end");
            // Candle reads twice the bytes per product but takes only 1.5 times as long: faster per byte.
            choice = match Trial::loop_for(call) {
                KLoop::Kdot => t.record(KLoop::Kdot, 100.0, 1000.0),
                KLoop::Candle => t.record(KLoop::Candle, 150.0, 2000.0),
            };
        }
        assert_eq!(choice, Some(KLoop::Candle));
        let mut slow = Trial::default();
        slow.record(KLoop::Kdot, 100.0, 1000.0);
        slow.record(KLoop::Candle, 300.0, 2000.0);
        assert_eq!(slow.faster(), KLoop::Kdot);
        assert_eq!(Trial::default().faster(), KLoop::Kdot);
    }
}
