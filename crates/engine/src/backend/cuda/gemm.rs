//! Projections through cuBLASLt: bf16 operands, f32 accumulation and scale, bf16 output. A plan (descriptor,
//! layouts and an algorithm) is made once per shape and reused, so a step pays no heuristic query per
//! projection. The algorithm is autotuned at the first call of a shape: up to 32 of the heuristic's candidates
//! (plus, for products of at most 128 rows, split-k versions of the first 8) are timed on the real operands with
//! device events and the fastest kept (`ENGRAM_GEMM_TUNE=0`: the heuristic's first choice). From 9 rows a shape
//! reuses the algorithm tuned for its row bucket ([`tuning_rows`]: multiples of 8 up to 128, powers of two
//! above), so prefill, scoring and speculative verify passes, whose row counts rarely repeat, do not retune at
//! every pass.

use std::collections::HashMap;
use std::ffi::c_void;
use std::mem::size_of;
use std::sync::{Arc, Mutex};

use cudarc::cublaslt::result as lt;
use cudarc::cublaslt::sys;
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DevicePtrMut};

use super::CudaError;

/// Bytes of cuBLASLt workspace (NVIDIA's recommendation for Hopper).
const WORKSPACE: usize = 32 << 20;

struct Plan {
    desc: sys::cublasLtMatmulDesc_t,
    a: sys::cublasLtMatrixLayout_t,
    b: sys::cublasLtMatrixLayout_t,
    c: sys::cublasLtMatrixLayout_t,
    algo: sys::cublasLtMatmulAlgo_t,
    candidates: Vec<sys::cublasLtMatmulAlgo_t>,
}

/// Heuristic candidates timed per shape.
const CANDIDATES: usize = 32;

/// Products of at most this many rows also try split-k versions of the heuristic's first candidates.
const SPLIT_K_MAX_ROWS: u64 = 128;

/// How many of the heuristic's candidates get split-k versions.
const SPLIT_K_BASES: usize = 8;

impl Drop for Plan {
    fn drop(&mut self) {
        // SAFETY: the handles were created by this plan and are destroyed once; failures are ignored at drop.
        unsafe {
            let _ = lt::destroy_matrix_layout(self.a);
            let _ = lt::destroy_matrix_layout(self.b);
            let _ = lt::destroy_matrix_layout(self.c);
            let _ = lt::destroy_matmul_desc(self.desc);
        }
    }
}

/// A cuBLASLt handle with its workspace and plans, bound to one stream.
pub struct Gemm {
    handle: sys::cublasLtHandle_t,
    workspace: CudaSlice<u8>,
    stream: Arc<CudaStream>,
    plans: Mutex<HashMap<(u64, u64, u64), Plan>>,
    /// The tuned algorithm per (row bucket, n, k) (see [`tuning_rows`]): a new row count in a tuned bucket
    /// reuses it instead of timing every candidate again.
    tuned: Mutex<HashMap<(u64, u64, u64), sys::cublasLtMatmulAlgo_t>>,
    /// Whether new shapes are autotuned (`engine.cuda.gemm_tune`); otherwise the heuristic's first choice.
    tune: bool,
}

/// The row count whose tuning a product of `m` rows shares: its own up to 8 rows, the next multiple of 8 up to
/// 128 rows (decode batches, where the best algorithm changes quickly with m), else the next power of two.
/// Prefill and scoring passes have a new row count almost every time (the packed token count), and so do
/// speculative decoding's verify passes (the batch plus every sequence's guesses); timing 32-72 candidates for
/// each new count would cost more than the pass itself.
pub fn tuning_rows(m: u64) -> u64 {
    if m <= 8 {
        m
    } else if m <= SPLIT_K_MAX_ROWS {
        m.div_ceil(8) * 8
    } else {
        m.next_power_of_two()
    }
}

// SAFETY: the handle and plans are only used under the plans' mutex or by `matmul` calls that enqueue work on the
// one stream; cuBLASLt handles may be used from any thread, one call at a time, which the mutex guarantees.
unsafe impl Send for Gemm {}
// SAFETY: see `Send`.
unsafe impl Sync for Gemm {}

impl Drop for Gemm {
    fn drop(&mut self) {
        self.plans.lock().map(|mut p| p.clear()).ok();
        // SAFETY: the handle was created in `new` and is destroyed once.
        unsafe {
            let _ = lt::destroy_handle(self.handle);
        }
    }
}

fn blas(op: &'static str) -> impl Fn(lt::CublasError) -> CudaError {
    move |e| CudaError::Blas {
        op,
        reason: format!("{e:?}"),
    }
}

impl Gemm {
    /// A handle and workspace on `stream`.
    pub fn new(stream: Arc<CudaStream>, tune: bool) -> Result<Self, CudaError> {
        let handle = lt::create_handle().map_err(blas("cublasLtCreate"))?;
        // SAFETY: the workspace is scratch memory that cuBLASLt writes before reading.
        let workspace = unsafe { stream.alloc::<u8>(WORKSPACE) }
            .map_err(|e| CudaError::driver("alloc workspace", e))?;
        Ok(Self {
            handle,
            workspace,
            stream,
            plans: Mutex::new(HashMap::new()),
            tuned: Mutex::new(HashMap::new()),
            tune,
        })
    }

    fn plan(&self, m: u64, n: u64, k: u64) -> Result<Plan, CudaError> {
        // Row-major y[m, n] = x[m, k] w[n, k]^T is column-major y^T[n, m] = w^T... i.e. C(n x m) = op(A) B with
        // A = w stored column-major k x n (transposed), B = x stored column-major k x m.
        let bf16 = sys::cudaDataType_t::CUDA_R_16BF;
        let desc = lt::create_matmul_desc(
            sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            sys::cudaDataType_t::CUDA_R_32F,
        )
        .map_err(blas("cublasLtMatmulDescCreate"))?;
        let a = lt::create_matrix_layout(bf16, k, n, k as i64).map_err(blas("layout"))?;
        let b = lt::create_matrix_layout(bf16, k, m, k as i64).map_err(blas("layout"))?;
        let c = lt::create_matrix_layout(bf16, n, m, n as i64).map_err(blas("layout"))?;
        let trans: i32 = 1; // CUBLAS_OP_T
        let no: i32 = 0;
        let pref = lt::create_matmul_pref().map_err(blas("cublasLtMatmulPreferenceCreate"))?;
        let ws = WORKSPACE as u64;
        // SAFETY: attribute buffers are live locals of the sizes the attributes expect.
        let algo = unsafe {
            lt::set_matmul_desc_attribute(
                desc,
                sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSA,
                &trans as *const i32 as *const c_void,
                size_of::<i32>(),
            )
            .map_err(blas("set TRANSA"))?;
            lt::set_matmul_desc_attribute(
                desc,
                sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSB,
                &no as *const i32 as *const c_void,
                size_of::<i32>(),
            )
            .map_err(blas("set TRANSB"))?;
            lt::set_matmul_pref_attribute(
                pref,
                sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                &ws as *const u64 as *const c_void,
                size_of::<u64>(),
            )
            .map_err(blas("set workspace"))?;
            let mut results: [sys::cublasLtMatmulHeuristicResult_t; CANDIDATES] =
                std::mem::zeroed();
            let mut count: i32 = 0;
            let status = sys::cublasLtMatmulAlgoGetHeuristic(
                self.handle,
                desc,
                a,
                b,
                c,
                c,
                pref,
                CANDIDATES as i32,
                results.as_mut_ptr(),
                &mut count,
            );
            let _ = lt::destroy_matmul_pref(pref);
            status
                .result()
                .map_err(blas("cublasLtMatmulAlgoGetHeuristic"))?;
            let usable: Vec<sys::cublasLtMatmulAlgo_t> = results[..count.max(0) as usize]
                .iter()
                .filter(|r| r.state == sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS)
                .map(|r| r.algo)
                .collect();
            if usable.is_empty() {
                return Err(CudaError::Blas {
                    op: "cublasLtMatmulAlgoGetHeuristic",
                    reason: format!("no algorithm for m={m} n={n} k={k}"),
                });
            }
            let mut all = usable.clone();
            if m <= SPLIT_K_MAX_ROWS {
                all.extend(self.split_k_variants(desc, a, b, c, &usable));
            }
            tracing::debug!(
                m,
                n,
                k,
                heuristic = usable.len(),
                split_k = all.len() - usable.len(),
                "cuBLASLt candidates"
            );
            all
        };
        Ok(Plan {
            desc,
            a,
            b,
            c,
            algo: algo[0],
            candidates: algo,
        })
    }

    /// Split-k copies (2 to 8 pieces of k, reduced in f32 in the workspace) of the first heuristic candidates that
    /// cuBLASLt accepts for this problem: for decode batches the products are short and wide, and the heuristic's
    /// own choices leave most multiprocessors idle on the smaller ones (q/k/v, o).
    fn split_k_variants(
        &self,
        desc: sys::cublasLtMatmulDesc_t,
        a: sys::cublasLtMatrixLayout_t,
        b: sys::cublasLtMatrixLayout_t,
        c: sys::cublasLtMatrixLayout_t,
        base: &[sys::cublasLtMatmulAlgo_t],
    ) -> Vec<sys::cublasLtMatmulAlgo_t> {
        use sys::cublasLtMatmulAlgoConfigAttributes_t as Cfg;
        let scheme = sys::cublasLtReductionScheme_t::CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE as u32;
        let mut out = Vec::new();
        for algo in base.iter().take(SPLIT_K_BASES) {
            for splits in [2u32, 3, 4, 6, 8] {
                let mut v = *algo;
                // SAFETY: `v` is a live copy of an algorithm cuBLASLt returned; the attribute buffers are u32
                // locals, the sizes these attributes take; the check only reads the descriptors.
                let accepted = unsafe {
                    let set = |attr: Cfg, value: &u32, v: &mut sys::cublasLtMatmulAlgo_t| {
                        sys::cublasLtMatmulAlgoConfigSetAttribute(
                            v,
                            attr,
                            value as *const u32 as *const c_void,
                            size_of::<u32>(),
                        )
                    };
                    let mut result: sys::cublasLtMatmulHeuristicResult_t = std::mem::zeroed();
                    set(Cfg::CUBLASLT_ALGO_CONFIG_SPLITK_NUM, &splits, &mut v)
                        .result()
                        .is_ok()
                        && set(Cfg::CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME, &scheme, &mut v)
                            .result()
                            .is_ok()
                        && sys::cublasLtMatmulAlgoCheck(
                            self.handle,
                            desc,
                            a,
                            b,
                            c,
                            c,
                            &v,
                            &mut result,
                        )
                        .result()
                        .is_ok()
                        && result.workspaceSize <= WORKSPACE
                };
                if accepted {
                    out.push(v);
                }
            }
        }
        out
    }

    /// Whether cuBLASLt can run `plan`'s problem with `algo` (tuned for another row count) within the workspace.
    fn accepts(&self, plan: &Plan, algo: &sys::cublasLtMatmulAlgo_t) -> bool {
        // SAFETY: the check only reads the plan's live descriptors and the algorithm; `result` is a local.
        unsafe {
            let mut result: sys::cublasLtMatmulHeuristicResult_t = std::mem::zeroed();
            sys::cublasLtMatmulAlgoCheck(
                self.handle,
                plan.desc,
                plan.a,
                plan.b,
                plan.c,
                plan.c,
                algo,
                &mut result,
            )
            .result()
            .is_ok()
                && result.workspaceSize <= WORKSPACE
        }
    }

    /// Runs `plan` with `algo` on raw device pointers.
    #[allow(clippy::too_many_arguments)]
    fn launch(
        &self,
        plan: &Plan,
        algo: &sys::cublasLtMatmulAlgo_t,
        wp: u64,
        xp: u64,
        yp: u64,
        ws: u64,
    ) -> Result<(), CudaError> {
        let (alpha, beta) = (1.0f32, 0.0f32);
        // SAFETY: the callers pass live device buffers at least as large as the plan's layouts; the plan's
        // descriptor and layouts are alive while the plans' lock is held.
        unsafe {
            lt::matmul(
                self.handle,
                plan.desc,
                &alpha as *const f32 as *const c_void,
                &beta as *const f32 as *const c_void,
                wp as *const c_void,
                plan.a,
                xp as *const c_void,
                plan.b,
                yp as *const c_void,
                plan.c,
                yp as *mut c_void,
                plan.c,
                algo,
                ws as *mut c_void,
                WORKSPACE,
                self.stream.cu_stream() as *mut _,
            )
        }
        .map_err(blas("cublasLtMatmul"))
    }

    /// Times each candidate of `plan` (one warm-up, three timed runs) and keeps the fastest.
    fn tune(&self, plan: &mut Plan, wp: u64, xp: u64, yp: u64, ws: u64) -> Result<(), CudaError> {
        use cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT;
        let mut best: Option<(f32, usize)> = None;
        for (i, algo) in plan.candidates.iter().enumerate() {
            if self.launch(plan, algo, wp, xp, yp, ws).is_err() {
                continue;
            }
            let ev = |s: &CudaStream| s.record_event(Some(CU_EVENT_DEFAULT));
            let start = ev(&self.stream).map_err(|e| CudaError::driver("cuEventRecord", e))?;
            let mut ok = true;
            for _ in 0..3 {
                ok &= self.launch(plan, algo, wp, xp, yp, ws).is_ok();
            }
            let end = ev(&self.stream).map_err(|e| CudaError::driver("cuEventRecord", e))?;
            end.synchronize()
                .map_err(|e| CudaError::driver("cuEventSynchronize", e))?;
            let ms = start
                .elapsed_ms(&end)
                .map_err(|e| CudaError::driver("cuEventElapsedTime", e))?;
            if ok && best.is_none_or(|(b, _)| ms < b) {
                best = Some((ms, i));
            }
        }
        if let Some((ms, i)) = best {
            plan.algo = plan.candidates[i];
            tracing::debug!(
                candidate = i,
                of = plan.candidates.len(),
                us = f64::from(ms) * 1e3 / 3.0,
                "cuBLASLt plan tuned"
            );
        }
        Ok(())
    }

    /// `y[m, n] = x[m, k] · w[n, k]^T`, all bf16 row-major, on the stream.
    pub fn matmul(
        &self,
        x: &CudaSlice<u16>,
        w: &CudaSlice<u16>,
        y: &mut CudaSlice<u16>,
        m: usize,
        n: usize,
        k: usize,
    ) -> Result<(), CudaError> {
        if x.len() < m * k || w.len() < n * k || y.len() < m * n {
            return Err(CudaError::Blas {
                op: "matmul",
                reason: format!(
                    "buffers of {}, {} and {} elements for m={m} n={n} k={k}",
                    x.len(),
                    w.len(),
                    y.len()
                ),
            });
        }
        let key = (m as u64, n as u64, k as u64);
        let s = &self.stream;
        let (wp, _g1) = w.device_ptr(s);
        let (xp, _g2) = x.device_ptr(s);
        let (ws, _g3) = self.workspace.device_ptr(s);
        let (yp, _g4) = y.device_ptr_mut(s);
        let mut plans = self.plans.lock().unwrap_or_else(|p| p.into_inner());
        let plan = match plans.entry(key) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                let mut plan = self.plan(key.0, key.1, key.2)?;
                let tune = self.tune;
                let bucket = (tuning_rows(key.0), key.1, key.2);
                let known = self
                    .tuned
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(&bucket)
                    .copied();
                match known {
                    Some(algo) if tune && self.accepts(&plan, &algo) => plan.algo = algo,
                    _ if plan.candidates.len() > 1 && tune => {
                        self.tune(&mut plan, wp, xp, yp, ws)?;
                        self.tuned
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .insert(bucket, plan.algo);
                    }
                    _ => {}
                }
                e.insert(plan)
            }
        };
        self.launch(plan, &plan.algo, wp, xp, yp, ws)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_shapes_tune_alone_and_larger_ones_share_a_bucket() {
        assert_eq!(tuning_rows(1), 1);
        assert_eq!(tuning_rows(8), 8);
        assert_eq!(tuning_rows(9), 16);
        assert_eq!(tuning_rows(57), 64);
        assert_eq!(tuning_rows(64), 64);
        assert_eq!(tuning_rows(128), 128);
        assert_eq!(tuning_rows(129), 256);
        assert_eq!(tuning_rows(5000), 8192);
        assert_eq!(tuning_rows(8192), 8192);
    }
}
