//! Our tensor-core kernels for short-and-wide products (`kernels/gemm_skinny.cu`): the projections of a decode
//! batch of 9 to 64 sequences. They stream the weights through a multi-stage `cp.async` ring, split k across blocks
//! when the columns alone would leave multiprocessors idle, and take part in programmatic dependent launch (their
//! first weights are requested before they wait for the previous kernel), which cuBLASLt's kernels do not.
//!
//! Which one runs is measured, not guessed: at the first product of a shape every configuration (ring depth x
//! split count) and cuBLASLt's own tuned plan are timed on the real operands, and the fastest is kept for that shape
//! ([`SkinnyMode::Tuned`], the default; `ENGRAM_SKINNY_GEMM=0` keeps cuBLASLt, `=own` our kernels). The timing
//! evicts the operands from L2 first: a decode step streams every layer's weights, so they are never cached.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cudarc::driver::sys::CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES;
use cudarc::driver::{CudaFunction, CudaSlice, CudaStream, LaunchConfig};

use super::launch::{KernelArgs, PushArg};
use super::registry::KernelRegistry;
use super::CudaError;

/// The most rows (sequences) a skinny product takes.
pub const SKINNY_MAX_ROWS: usize = 64;
/// Output columns per block.
const TILE_N: usize = 128;
/// k per pipeline step.
const STEP_K: usize = 64;
/// Threads per block.
const THREADS: u32 = 256;
/// Shared memory of one pipeline stage: 64 x 64 inputs and 128 x 64 weights, bf16.
const STAGE_BYTES: u32 = 24 * 1024;
/// The ring depths the kernel is instantiated for (`gemm_skinny_s{N}`).
const STAGES: [u32; 2] = [4, 8];
/// The split counts tried.
const SPLITS: [usize; 6] = [1, 2, 3, 4, 6, 8];
/// f32 elements of split-k partials (16 MiB).
const PARTIAL_FLOATS: usize = 4 << 20;
/// Column tiles with a split-k counter.
const COUNTERS: usize = 4096;

/// One configuration of the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SkinnyConfig {
    /// Depth of the shared-memory ring (one of 4, 8).
    pub stages: u32,
    /// Pieces k is split into (1 = no split).
    pub splits: usize,
}

/// How products of 9 to 64 rows are computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SkinnyMode {
    /// The fastest of our configurations and cuBLASLt, timed per shape (the default).
    Tuned,
    /// cuBLASLt always.
    Off,
    /// The fastest of our configurations, timed per shape, never cuBLASLt (`ENGRAM_SKINNY_GEMM=own`; for
    /// comparisons of whole decode steps).
    Own,
    /// This configuration wherever the shape allows it (for parity tests and comparisons).
    Force(SkinnyConfig),
}

/// What a shape was tuned to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Choice {
    /// Our kernel with this configuration.
    Own(SkinnyConfig),
    /// cuBLASLt.
    Blas,
}

/// The kernels, the split-k scratch and the per-shape choices.
pub(super) struct SkinnyGemm {
    kernels: Vec<(u32, CudaFunction)>,
    /// Split-k partial tiles, f32 [splits][m][n].
    partials: CudaSlice<f32>,
    /// Per-column-tile arrival counters of split-k; zero between launches (the last block resets its own).
    counters: CudaSlice<u32>,
    choices: Mutex<HashMap<(usize, usize, usize), Choice>>,
    mode: Mutex<SkinnyMode>,
}

impl SkinnyGemm {
    /// Loads the kernels (raising their dynamic shared-memory limit) and allocates the split-k scratch.
    pub(super) fn new(
        registry: &KernelRegistry,
        stream: &Arc<CudaStream>,
    ) -> Result<Self, CudaError> {
        let mut kernels = Vec::new();
        for stages in STAGES {
            let name = format!("gemm_skinny_s{stages}");
            let f = registry.function("gemm_skinny", &name)?;
            f.set_attribute(
                CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                (stages * STAGE_BYTES) as i32,
            )
            .map_err(|e| CudaError::Kernel {
                module: "gemm_skinny".into(),
                kernel: name,
                reason: format!("raising the dynamic shared memory limit: {e:?}"),
            })?;
            kernels.push((stages, f));
        }
        let alloc = |what| move |e| CudaError::driver(what, e);
        let partials = stream
            .alloc_zeros::<f32>(PARTIAL_FLOATS)
            .map_err(alloc("alloc split-k partials"))?;
        let counters = stream
            .alloc_zeros::<u32>(COUNTERS)
            .map_err(alloc("alloc split-k counters"))?;
        let mode = match std::env::var("ENGRAM_SKINNY_GEMM").as_deref() {
            Ok("0") => SkinnyMode::Off,
            Ok("own") => SkinnyMode::Own,
            _ => SkinnyMode::Tuned,
        };
        Ok(Self {
            kernels,
            partials,
            counters,
            choices: Mutex::new(HashMap::new()),
            mode: Mutex::new(mode),
        })
    }

    /// Sets the mode and forgets the tuned choices.
    pub(super) fn set_mode(&self, mode: SkinnyMode) {
        *self.mode.lock().unwrap_or_else(|p| p.into_inner()) = mode;
        self.choices
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    pub(super) fn mode(&self) -> SkinnyMode {
        *self.mode.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the kernel takes an `m x k` by `n x k` product.
    pub(super) fn fits(m: usize, n: usize, k: usize) -> bool {
        (1..=SKINNY_MAX_ROWS).contains(&m)
            && n % TILE_N == 0
            && n / TILE_N <= COUNTERS
            && k % STEP_K == 0
            && k > 0
    }

    /// Every configuration that can run this shape.
    pub(super) fn candidates(m: usize, n: usize, k: usize) -> Vec<SkinnyConfig> {
        if !Self::fits(m, n, k) {
            return Vec::new();
        }
        let mut out = Vec::new();
        for stages in STAGES {
            for splits in SPLITS {
                if splits <= k / STEP_K && (splits == 1 || splits * m * n <= PARTIAL_FLOATS) {
                    out.push(SkinnyConfig { stages, splits });
                }
            }
        }
        out
    }

    /// The tuned choice for a shape, if it was tuned.
    pub(super) fn choice(&self, key: (usize, usize, usize)) -> Option<Choice> {
        self.choices
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .copied()
    }

    /// Remembers the tuned choice for a shape.
    pub(super) fn remember(&self, key: (usize, usize, usize), choice: Choice) {
        self.choices
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, choice);
    }

    /// Enqueues `y[m, n] = x[m, k] w[n, k]^T` with configuration `cfg` (which must be one of
    /// [`SkinnyGemm::candidates`] for the shape).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn launch(
        &self,
        stream: &CudaStream,
        pdl: bool,
        cfg: SkinnyConfig,
        x: &CudaSlice<u16>,
        w: &CudaSlice<u16>,
        y: &mut CudaSlice<u16>,
        (m, n, k): (usize, usize, usize),
    ) -> Result<(), CudaError> {
        let Some((stages, f)) = self.kernels.iter().find(|(s, _)| *s == cfg.stages) else {
            return Err(CudaError::Kernel {
                module: "gemm_skinny".into(),
                kernel: format!("gemm_skinny_s{}", cfg.stages),
                reason: "no such ring depth".into(),
            });
        };
        if !Self::candidates(m, n, k).contains(&cfg)
            || x.len() < m * k
            || w.len() < n * k
            || y.len() < m * n
        {
            return Err(CudaError::Kernel {
                module: "gemm_skinny".into(),
                kernel: format!("gemm_skinny_s{stages}"),
                reason: format!(
                    "configuration {cfg:?} for m={m} n={n} k={k} with buffers of {}, {} and {} elements",
                    x.len(),
                    w.len(),
                    y.len()
                ),
            });
        }
        let (mi, ni, ki, si) = (m as i32, n as i32, k as i32, cfg.splits as i32);
        let mut b = KernelArgs::new(stream, f, pdl);
        // The scratch buffers are written by the kernel through shared references: they belong to this struct,
        // are used only by these launches, and every launch is ordered on the one stream.
        b.arg(x)
            .arg(w)
            .arg(y)
            .arg(&self.partials)
            .arg(&self.counters)
            .arg(&mi)
            .arg(&ni)
            .arg(&ki)
            .arg(&si);
        let launch_cfg = LaunchConfig {
            grid_dim: ((n / TILE_N) as u32, cfg.splits as u32, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: stages * STAGE_BYTES,
        };
        b.launch(launch_cfg, "gemm_skinny", &format!("gemm_skinny_s{stages}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_respect_the_shape_limits() {
        assert!(SkinnyGemm::candidates(65, 128, 64).is_empty());
        assert!(SkinnyGemm::candidates(16, 100, 64).is_empty());
        assert!(SkinnyGemm::candidates(16, 128, 96).is_empty());
        // k = 128 is two steps: at most 2 splits.
        let c = SkinnyGemm::candidates(16, 128, 128);
        assert_eq!(c.len(), 4);
        assert!(c.iter().all(|c| c.splits <= 2));
        // The 8B shape's projections at batch 64 take every configuration but the lm head's huge splits.
        assert_eq!(SkinnyGemm::candidates(64, 4096, 4096).len(), 12);
        let head = SkinnyGemm::candidates(64, 128_256, 4096);
        assert!(head
            .iter()
            .all(|c| c.splits * 64 * 128_256 <= PARTIAL_FLOATS || c.splits == 1));
        assert!(head.iter().any(|c| c.splits == 1));
    }
}
