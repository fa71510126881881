//! The CUDA backend: cudarc with dynamic loading (the binary builds and runs without CUDA; the driver, NVRTC and
//! cuBLASLt are found at run time), the `kernels/*.cu` modules compiled by NVRTC ([`registry`]), cuBLASLt for the
//! projections ([`gemm`]) and varlen/paged attention kernels ([`attention`]). Weights and activations are bf16, the
//! residual stream f32; everything runs in order on one stream, so host calls only enqueue work until a result
//! is read back.
#![allow(unsafe_code)]

pub mod attention;
pub mod gemm;
mod h2o;
mod hip;
mod launch;
pub mod registry;
pub mod roofline;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT;
use cudarc::driver::{
    CudaContext, CudaEvent, CudaFunction, CudaSlice, CudaStream, DriverError, LaunchConfig,
};
use launch::{KernelArgs, PushArg};

use super::{AttentionBatch, Backend, BackendError, KvLayout};
use crate::device::{CudaConfig, DecodeAttention};
use registry::KernelRegistry;

/// Errors of the CUDA backend; each names the call, module or kernel that failed.
#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    /// No usable CUDA driver or library on this machine.
    #[error("CUDA is not available: {0}")]
    Unavailable(String),
    /// A driver call failed.
    #[error("CUDA driver call `{op}` failed: {reason}")]
    Driver {
        /// The call.
        op: &'static str,
        /// The driver's error.
        reason: String,
    },
    /// NVRTC rejected a kernel module.
    #[error("NVRTC could not compile kernel module `{module}`: {log}")]
    Compile {
        /// The module (`kernels/<module>.cu`).
        module: String,
        /// NVRTC's log.
        log: String,
    },
    /// A kernel could not be loaded or launched.
    #[error("kernel `{kernel}` of module `{module}`: {reason}")]
    Kernel {
        /// The module.
        module: String,
        /// The kernel.
        kernel: String,
        /// What failed.
        reason: String,
    },
    /// A cuBLASLt call failed.
    #[error("cuBLASLt `{op}` failed: {reason}")]
    Blas {
        /// The call.
        op: &'static str,
        /// The status.
        reason: String,
    },
    /// Operands do not fit the operation (a bug in the caller).
    #[error("cuda {op}: {reason}")]
    Shape {
        /// The operation.
        op: &'static str,
        /// What disagrees.
        reason: String,
    },
}

impl CudaError {
    /// A failed driver call.
    pub fn driver(op: &'static str, e: DriverError) -> Self {
        Self::Driver {
            op,
            reason: format!("{e:?}"),
        }
    }
}

/// Whether the CUDA driver library can be loaded here (no GPU call is made).
pub fn driver_present() -> bool {
    // SAFETY: only tries to dlopen the driver library by its usual names.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// Number of CUDA devices, 0 when there is no driver.
pub fn device_count() -> usize {
    if !driver_present() {
        return 0;
    }
    CudaContext::device_count().map_or(0, |n| n.max(0) as usize)
}

/// Storage of a CUDA tensor.
#[derive(Debug)]
pub enum CudaBuf {
    /// bf16 values (raw bits).
    Bf16(CudaSlice<u16>),
    /// f32 values (the residual stream).
    F32(CudaSlice<f32>),
}

/// A 2-D row-major tensor on the GPU.
#[derive(Debug)]
pub struct CudaTensor {
    buf: CudaBuf,
    rows: usize,
    cols: usize,
}

impl CudaTensor {
    /// `[rows, cols]`.
    pub fn shape(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    fn bf16(&self, op: &'static str) -> Result<&CudaSlice<u16>, CudaError> {
        match &self.buf {
            CudaBuf::Bf16(s) => Ok(s),
            CudaBuf::F32(_) => Err(CudaError::Shape {
                op,
                reason: "expected a bf16 tensor, got f32".into(),
            }),
        }
    }

    fn f32_mut(&mut self, op: &'static str) -> Result<&mut CudaSlice<f32>, CudaError> {
        match &mut self.buf {
            CudaBuf::F32(s) => Ok(s),
            CudaBuf::Bf16(_) => Err(CudaError::Shape {
                op,
                reason: "expected the f32 residual stream, got bf16".into(),
            }),
        }
    }
}

/// K and V of every layer, bf16, one row of `kv_heads * head_dim` per slot.
#[derive(Debug)]
pub struct CudaKv {
    layout: KvLayout,
    k: Vec<CudaSlice<u16>>,
    v: Vec<CudaSlice<u16>>,
    /// H2O attention scores, f32 per slot and KV head, every layer in one buffer ([`h2o::layer_stride`] apart).
    scores: CudaSlice<f32>,
}

/// The skinny-product kernels (`kernels/gemv.cu`) exist for products of up to this many rows.
pub const GEMV_MAX_ROWS: usize = 8;

/// Products of at most this many rows take the skinny-product kernels by default (`ENGRAM_GEMV_ROWS`), larger
/// ones cuBLASLt. On the H200 with the Llama-3-8B shape a whole decode step took 4.13 / 4.30 / 4.84 / 6.73 /
/// 10.43 ms at 1 / 2 / 3 / 5 / 8 rows with the kernels against 5.14-5.25 ms with cuBLASLt (BENCHMARKS.md): the
/// kernels read the weights once but their arithmetic grows with the rows.
pub const GEMV_DEFAULT_ROWS: usize = 3;

/// Head dimensions the attention kernels are instantiated for.
pub const HEAD_DIMS: [usize; 4] = [16, 32, 64, 128];

struct Kernels {
    embed_rows: CudaFunction,
    rms_norm: CudaFunction,
    add_rms_norm: CudaFunction,
    add_residual: CudaFunction,
    add_bias: CudaFunction,
    rope: CudaFunction,
    swiglu: CudaFunction,
    gather_rows: CudaFunction,
    write_kv: CudaFunction,
    rope_qkv_cache: CudaFunction,
    swiglu_packed: CudaFunction,
    rms_norm_v8: CudaFunction,
    add_rms_norm_v8: CudaFunction,
    swiglu_packed_v8: CudaFunction,
    fill_uniform: CudaFunction,
    /// `gemv_m1` ..= `gemv_m8`, and the fused variants.
    gemv: Vec<CudaFunction>,
    gemv_swiglu: Vec<CudaFunction>,
    gemv_qkv_rope: Vec<CudaFunction>,
    select_tokens: CudaFunction,
    token_log_probs: CudaFunction,
    attn_combine: CudaFunction,
    attn_prefill: Vec<CudaFunction>,
    attn_decode: Vec<CudaFunction>,
    /// The tensor-core decode kernels (`attn_decode_mma_d*`), used unless `engine.cuda.decode_attention` is `simt`.
    attn_decode_mma: Vec<CudaFunction>,
    /// H2O: scores reset, accumulation (per head dimension), read-out and compaction.
    h2o_reset: CudaFunction,
    h2o_accumulate: Vec<CudaFunction>,
    h2o_read: CudaFunction,
    h2o_gather: CudaFunction,
    h2o_scatter: CudaFunction,
    h2o_from_raw: CudaFunction,
    /// HiP's mask search and tile lists (per head dimension).
    hip_search: Vec<CudaFunction>,
}

impl Kernels {
    fn load(r: &KernelRegistry) -> Result<Self, CudaError> {
        let e = |k: &str| r.function("elementwise", k);
        let per_dim = |prefix: &str| -> Result<Vec<CudaFunction>, CudaError> {
            HEAD_DIMS
                .iter()
                .map(|d| r.function("attention", &format!("{prefix}{d}")))
                .collect()
        };
        Ok(Self {
            embed_rows: e("embed_rows")?,
            rms_norm: e("rms_norm")?,
            add_rms_norm: e("add_rms_norm")?,
            add_residual: e("add_residual")?,
            add_bias: e("add_bias")?,
            rope: e("rope")?,
            swiglu: e("swiglu")?,
            gather_rows: e("gather_rows")?,
            write_kv: e("write_kv")?,
            rope_qkv_cache: e("rope_qkv_cache_heads")?,
            swiglu_packed: e("swiglu_packed")?,
            rms_norm_v8: e("rms_norm_v8")?,
            add_rms_norm_v8: e("add_rms_norm_v8")?,
            swiglu_packed_v8: e("swiglu_packed_v8")?,
            fill_uniform: e("fill_uniform")?,
            gemv: (1..=GEMV_MAX_ROWS)
                .map(|m| r.function("gemv", &format!("gemv_m{m}")))
                .collect::<Result<_, _>>()?,
            gemv_swiglu: (1..=GEMV_MAX_ROWS)
                .map(|m| r.function("gemv", &format!("gemv_swiglu_m{m}")))
                .collect::<Result<_, _>>()?,
            gemv_qkv_rope: (1..=GEMV_MAX_ROWS)
                .map(|m| r.function("gemv", &format!("gemv_qkv_rope_m{m}")))
                .collect::<Result<_, _>>()?,
            select_tokens: r.function("sampling", "select_tokens")?,
            token_log_probs: r.function("sampling", "token_log_probs")?,
            attn_combine: r.function("attention", "attn_combine")?,
            attn_prefill: per_dim("attn_prefill_d")?,
            attn_decode: per_dim("attn_decode_d")?,
            attn_decode_mma: per_dim("attn_decode_mma_d")?,
            h2o_reset: r.function("h2o", "h2o_reset")?,
            h2o_accumulate: HEAD_DIMS
                .iter()
                .map(|d| r.function("h2o", &format!("h2o_accumulate_d{d}")))
                .collect::<Result<_, _>>()?,
            h2o_read: r.function("h2o", "h2o_read")?,
            h2o_gather: r.function("h2o", "h2o_gather")?,
            h2o_scatter: r.function("h2o", "h2o_scatter")?,
            h2o_from_raw: r.function("h2o", "h2o_from_raw")?,
            hip_search: HEAD_DIMS
                .iter()
                .map(|d| r.function("hip", &format!("hip_search_d{d}")))
                .collect::<Result<_, _>>()?,
        })
    }
}

/// Small host arrays (token ids, positions, slots, attention metadata) uploaded once per distinct content: the
/// model passes the same positions to every layer's RoPE, so only the first layer uploads them.
type UploadCache = HashMap<&'static str, (Vec<u32>, Arc<CudaSlice<u32>>)>;

/// The CUDA backend on one device.
pub struct CudaBackend {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    gemm: gemm::Gemm,
    kernels: Kernels,
    registry: KernelRegistry,
    uploads: Mutex<UploadCache>,
    device_name: String,
    sm_count: usize,
    /// Products of at most this many rows use `kernels/gemv.cu` (`engine.cuda.gemv_rows`; 0: none).
    gemv_rows: std::sync::atomic::AtomicUsize,
    /// Whether decode attention runs on tensor cores (`attn_decode_mma_d*`, unless `engine.cuda.decode_attention`
    /// is `simt`) or on the CUDA cores (`attn_decode_d*`).
    decode_mma: std::sync::atomic::AtomicBool,
    /// Fewest key tiles of a decode-attention split (`engine.cuda.decode_min_tiles`).
    decode_min_tiles: usize,
    /// Decode-attention blocks per multiprocessor the split aims at (`engine.cuda.decode_blocks_per_sm`).
    decode_blocks_per_sm: usize,
    /// Whether cuBLASLt products are autotuned (`engine.cuda.gemm_tune`).
    gemm_tune: bool,
    /// Per-operation device timings when profiling ([`CudaBackend::set_profiling`]).
    profile: Mutex<Option<Vec<(String, CudaEvent, CudaEvent)>>>,
    /// Whether kernels launch with programmatic dependent launch (compute capability 9.0 and later, unless
    /// `engine.cuda.pdl` is false): see [`launch`].
    pdl: bool,
}

/// Times one operation on the stream while profiling: events around it, read at [`CudaBackend::take_profile`].
struct Span<'a> {
    be: &'a CudaBackend,
    name: Option<String>,
    start: Option<CudaEvent>,
}

impl Drop for Span<'_> {
    fn drop(&mut self) {
        if let (Some(name), Some(start)) = (self.name.take(), self.start.take()) {
            if let Ok(end) = self.be.stream.record_event(Some(CU_EVENT_DEFAULT)) {
                if let Some(p) = self
                    .be
                    .profile
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .as_mut()
                {
                    p.push((name, start, end));
                }
            }
        }
    }
}

impl std::fmt::Debug for CudaBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaBackend")
            .field("device", &self.device_name)
            .field("ordinal", &self.ctx.ordinal())
            .finish()
    }
}

/// Threads per block of the row kernels.
const ROW_THREADS: u32 = 256;

/// The vectorised row kernels' block size for `width` (8 elements per thread, whole warps), when they apply.
fn v8_threads(width: usize) -> Option<u32> {
    (width.is_multiple_of(8) && width / 8 <= 1024)
        .then(|| ((width / 8).div_ceil(32) * 32).max(32) as u32)
}

fn rows_cfg(rows: usize, threads: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (rows.max(1) as u32, 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    }
}

impl CudaBackend {
    /// Opens device `ordinal` with the default knobs ([`CudaConfig::default`]).
    pub fn new(ordinal: usize) -> Result<Self, CudaError> {
        Self::with_config(ordinal, &CudaConfig::default())
    }

    /// Opens device `ordinal`: creates the context and stream, compiles (or loads from `config.kernel_cache`) the
    /// kernels, and creates the cuBLASLt handle. Fails with [`CudaError::Unavailable`] where there is no driver or
    /// no such device.
    pub fn with_config(ordinal: usize, config: &CudaConfig) -> Result<Self, CudaError> {
        if !driver_present() {
            return Err(CudaError::Unavailable(
                "the CUDA driver library (libcuda.so) was not found".into(),
            ));
        }
        let count = device_count();
        if ordinal >= count {
            return Err(CudaError::Unavailable(format!(
                "device cuda:{ordinal} asked for, {count} CUDA device(s) found"
            )));
        }
        // SAFETY: only tries to dlopen the libraries.
        let (nvrtc, lt) = unsafe {
            (
                cudarc::nvrtc::sys::is_culib_present(),
                cudarc::cublaslt::sys::is_culib_present(),
            )
        };
        if !nvrtc || !lt {
            return Err(CudaError::Unavailable(format!(
                "NVRTC {} and cuBLASLt {} (libnvrtc.so.13, libcublasLt.so.13: add their directory to \
                 LD_LIBRARY_PATH)",
                if nvrtc { "found" } else { "not found" },
                if lt { "found" } else { "not found" }
            )));
        }
        let ctx = CudaContext::new(ordinal).map_err(|e| CudaError::driver("cuCtxCreate", e))?;
        // One stream, in order: cudarc's per-buffer event tracking is not needed and costs a record per launch.
        // SAFETY: no other stream of this context touches these buffers.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx
            .new_stream()
            .map_err(|e| CudaError::driver("cuStreamCreate", e))?;
        keep_pool_memory(&ctx)?;
        let registry = KernelRegistry::load(&ctx, config.kernel_cache.as_deref())?;
        let kernels = Kernels::load(&registry)?;
        let gemm = gemm::Gemm::new(stream.clone(), config.gemm_tune)?;
        let device_name = ctx.name().unwrap_or_else(|_| "CUDA device".into());
        let major = ctx
            .attribute(
                cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR,
            )
            .unwrap_or(0);
        let pdl = major >= 9 && config.pdl;
        let sm_count = ctx
            .attribute(
                cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
            )
            .map_or(1, |n| n.max(1) as usize);
        Ok(Self {
            ctx,
            stream,
            gemm,
            kernels,
            registry,
            uploads: Mutex::new(HashMap::new()),
            device_name,
            sm_count,
            gemv_rows: std::sync::atomic::AtomicUsize::new(config.gemv_rows.min(GEMV_MAX_ROWS)),
            profile: Mutex::new(None),
            pdl,
            decode_mma: std::sync::atomic::AtomicBool::new(
                config.decode_attention == DecodeAttention::Mma,
            ),
            decode_min_tiles: config.decode_min_tiles.max(1),
            decode_blocks_per_sm: config.decode_blocks_per_sm.max(1),
            gemm_tune: config.gemm_tune,
        })
    }

    /// Sends every product of at most [`GEMV_MAX_ROWS`] rows to the skinny-product kernels (`true`: what the
    /// parity tests check) or all of them to cuBLASLt (`false`).
    pub fn set_gemv(&self, on: bool) {
        self.set_gemv_rows(if on { GEMV_MAX_ROWS } else { 0 });
    }

    /// Products of at most `rows` rows (capped at [`GEMV_MAX_ROWS`]) take the skinny-product kernels.
    pub fn set_gemv_rows(&self, rows: usize) {
        self.gemv_rows.store(
            rows.min(GEMV_MAX_ROWS),
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// Chooses the decode attention kernel: tensor cores (the default) or CUDA cores (for comparisons).
    pub fn set_decode_tensor_cores(&self, on: bool) {
        self.decode_mma
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether an `m x k` input takes the skinny-product kernels.
    fn skinny(&self, m: usize, k: usize) -> bool {
        m >= 1
            && m <= self.gemv_rows.load(std::sync::atomic::Ordering::Relaxed)
            && k.is_multiple_of(8)
    }

    /// Starts (or stops) timing every operation with device events.
    pub fn set_profiling(&self, on: bool) {
        *self.profile.lock().unwrap_or_else(|p| p.into_inner()) = on.then(Vec::new);
    }

    /// Device milliseconds and calls per operation since profiling started (largest total first); restarts the
    /// collection.
    pub fn take_profile(&self) -> Result<Vec<(String, f64, usize)>, CudaError> {
        self.cuda_sync()?;
        let spans = self
            .profile
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default();
        let mut totals: HashMap<String, (f64, usize)> = HashMap::new();
        for (name, start, end) in spans {
            let ms = start
                .elapsed_ms(&end)
                .map_err(|e| CudaError::driver("cuEventElapsedTime", e))?;
            let t = totals.entry(name).or_default();
            t.0 += ms as f64;
            t.1 += 1;
        }
        let mut out: Vec<(String, f64, usize)> =
            totals.into_iter().map(|(k, (ms, n))| (k, ms, n)).collect();
        out.sort_by(|a, b| b.1.total_cmp(&a.1));
        Ok(out)
    }

    fn span(&self, name: impl FnOnce() -> String) -> Span<'_> {
        let on = self
            .profile
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some();
        let start = if on {
            self.stream.record_event(Some(CU_EVENT_DEFAULT)).ok()
        } else {
            None
        };
        Span {
            be: self,
            name: on.then(name),
            start,
        }
    }

    /// The device's name (e.g. `NVIDIA H200`).
    pub fn device_name(&self) -> &str {
        &self.device_name
    }

    /// Seconds NVRTC spent compiling at start (0 when every module came from the disk cache).
    pub fn kernel_compile_seconds(&self) -> f64 {
        self.registry.compile_seconds
    }

    /// The stream all work runs on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// (free, total) bytes of device memory.
    pub fn mem_info(&self) -> Result<(usize, usize), CudaError> {
        self.ctx
            .mem_get_info()
            .map_err(|e| CudaError::driver("cuMemGetInfo", e))
    }

    /// The most bytes the memory pool has had in use since the last [`Self::reset_peak_memory`].
    pub fn peak_memory(&self) -> Result<u64, CudaError> {
        pool_attribute(
            &self.ctx,
            cudarc::driver::sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH,
            None,
        )
    }

    /// Restarts [`Self::peak_memory`] from the bytes in use now.
    pub fn reset_peak_memory(&self) -> Result<(), CudaError> {
        pool_attribute(
            &self.ctx,
            cudarc::driver::sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH,
            Some(0),
        )
        .map(|_| ())
    }

    fn cuda_sync(&self) -> Result<(), CudaError> {
        self.stream
            .synchronize()
            .map_err(|e| CudaError::driver("cuStreamSynchronize", e))
    }

    /// Device copy of a host u32 array, reusing the last upload under `key` when the content is the same.
    fn upload(&self, key: &'static str, host: &[u32]) -> Result<Arc<CudaSlice<u32>>, CudaError> {
        let mut cache = self.uploads.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((h, d)) = cache.get(key) {
            if h.as_slice() == host {
                return Ok(d.clone());
            }
        }
        let data: &[u32] = if host.is_empty() { &[0] } else { host };
        let dev = Arc::new(
            self.stream
                .clone_htod(data)
                .map_err(|e| CudaError::driver("cuMemcpyHtoD", e))?,
        );
        cache.insert(key, (host.to_vec(), dev.clone()));
        Ok(dev)
    }

    /// Device copies of a step's positions, cache slots and RoPE inverse frequencies (as f32 bits).
    #[allow(clippy::type_complexity)]
    fn rope_inputs(
        &self,
        positions: &[u32],
        slots: &[u32],
        inv_freq: &[f32],
    ) -> Result<
        (
            Arc<CudaSlice<u32>>,
            Arc<CudaSlice<u32>>,
            Arc<CudaSlice<u32>>,
        ),
        CudaError,
    > {
        let bits: Vec<u32> = inv_freq.iter().map(|f| f.to_bits()).collect();
        Ok((
            self.upload("positions", positions)?,
            self.upload("slots", slots)?,
            self.upload("inv_freq", &bits)?,
        ))
    }

    fn alloc_bf16(&self, n: usize) -> Result<CudaSlice<u16>, CudaError> {
        // SAFETY: every caller's kernel writes all `n` elements before anything reads them.
        unsafe { self.stream.alloc::<u16>(n.max(1)) }
            .map_err(|e| CudaError::driver("cuMemAlloc", e))
    }

    fn alloc_f32(&self, n: usize) -> Result<CudaSlice<f32>, CudaError> {
        // SAFETY: as in `alloc_bf16`.
        unsafe { self.stream.alloc::<f32>(n.max(1)) }
            .map_err(|e| CudaError::driver("cuMemAlloc", e))
    }

    fn builder<'a>(&'a self, f: &'a CudaFunction) -> KernelArgs<'a> {
        KernelArgs::new(&self.stream, f, self.pdl)
    }

    /// A grid-stride launch shape for `n` elements.
    fn elems_cfg(&self, n: usize) -> LaunchConfig {
        let blocks = n
            .div_ceil(ROW_THREADS as usize)
            .clamp(1, self.sm_count * 16);
        rows_cfg(blocks, ROW_THREADS)
    }

    /// A bf16 tensor filled with `offset + std * uniform noise` from `seed` (on the GPU).
    pub fn random_bf16(
        &self,
        rows: usize,
        cols: usize,
        seed: u64,
        offset: f32,
        std: f32,
    ) -> Result<CudaTensor, CudaError> {
        let n = rows * cols;
        let mut out = self.alloc_bf16(n)?;
        let mut b = self.builder(&self.kernels.fill_uniform);
        b.arg(&mut out).arg(&n).arg(&seed).arg(&std).arg(&offset);
        launch(b, self.elems_cfg(n), "elementwise", "fill_uniform")?;
        Ok(CudaTensor {
            buf: CudaBuf::Bf16(out),
            rows,
            cols,
        })
    }
}

/// Launches a built kernel call, naming the kernel in the error.
fn launch(
    b: KernelArgs<'_>,
    cfg: LaunchConfig,
    module: &str,
    kernel: &str,
) -> Result<(), CudaError> {
    b.launch(cfg, module, kernel)
}

/// Keeps freed memory in the default pool (release threshold: unlimited), so per-step activations are recycled
/// instead of returned to the driver at every synchronisation.
fn keep_pool_memory(ctx: &Arc<CudaContext>) -> Result<(), CudaError> {
    pool_attribute(
        ctx,
        cudarc::driver::sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
        Some(u64::MAX),
    )
    .map(|_| ())
}

/// Reads (or with `set`, writes) a u64 attribute of the device's default memory pool.
fn pool_attribute(
    ctx: &Arc<CudaContext>,
    attr: cudarc::driver::sys::CUmemPool_attribute,
    set: Option<u64>,
) -> Result<u64, CudaError> {
    use cudarc::driver::sys;
    ctx.bind_to_thread()
        .map_err(|e| CudaError::driver("cuCtxSetCurrent", e))?;
    let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
    let mut value: u64 = set.unwrap_or(0);
    // SAFETY: `pool` and `value` are live locals; the device handle comes from a live context.
    unsafe {
        sys::cuDeviceGetDefaultMemPool(&mut pool, ctx.cu_device())
            .result()
            .map_err(|e| CudaError::driver("cuDeviceGetDefaultMemPool", e))?;
        let ptr = &mut value as *mut u64 as *mut std::ffi::c_void;
        if set.is_some() {
            sys::cuMemPoolSetAttribute(pool, attr, ptr)
                .result()
                .map_err(|e| CudaError::driver("cuMemPoolSetAttribute", e))?;
        } else {
            sys::cuMemPoolGetAttribute(pool, attr, ptr)
                .result()
                .map_err(|e| CudaError::driver("cuMemPoolGetAttribute", e))?;
        }
    }
    Ok(value)
}

/// Whether a fused q/k/v projection of `rows x cols` fits the attention prologue of `layer`: its width is q, k and
/// v of the layout's heads, and there is one position and one in-range cache slot per row.
#[allow(clippy::too_many_arguments)]
fn prologue_fits(
    l: KvLayout,
    rows: usize,
    cols: usize,
    layer: usize,
    heads: usize,
    positions: &[u32],
    slots: &[u32],
    inv_freq: &[f32],
) -> bool {
    let capacity = (l.num_blocks * l.block_size) as u32;
    cols == (heads + 2 * l.kv_heads) * l.head_dim
        && positions.len() == rows
        && slots.len() == rows
        && inv_freq.len() * 2 == l.head_dim
        && layer < l.layers
        && slots.iter().all(|&s| s < capacity)
}

fn bf16_bits(data: &[f32]) -> Vec<u16> {
    data.iter()
        .map(|&v| half::bf16::from_f32(v).to_bits())
        .collect()
}

fn shape_err(op: &'static str, reason: String) -> BackendError {
    BackendError::Cuda(CudaError::Shape { op, reason })
}

impl Backend for CudaBackend {
    type Tensor = CudaTensor;
    type Kv = CudaKv;

    fn name(&self) -> &'static str {
        "cuda"
    }

    fn weight(&self, host: &candle_core::Tensor) -> Result<CudaTensor, BackendError> {
        let dims = host.dims().to_vec();
        let (rows, cols) = match dims.as_slice() {
            [n] => (1, *n),
            [r, c] => (*r, *c),
            other => return Err(shape_err("weight", format!("rank {} tensor", other.len()))),
        };
        let data = host
            .to_dtype(candle_core::DType::F32)
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(|e| shape_err("weight", e.to_string()))?;
        let dev = self
            .stream
            .clone_htod(&bf16_bits(&data))
            .map_err(|e| CudaError::driver("cuMemcpyHtoD", e))?;
        Ok(CudaTensor {
            buf: CudaBuf::Bf16(dev),
            rows,
            cols,
        })
    }

    fn concat_rows(&self, parts: &[&CudaTensor]) -> Result<CudaTensor, BackendError> {
        let cols = parts.first().map_or(0, |p| p.cols);
        let rank1 = parts.iter().all(|p| p.rows == 1);
        let (rows, cols) = if rank1 {
            (1, parts.iter().map(|p| p.cols).sum())
        } else if parts.iter().all(|p| p.cols == cols) {
            (parts.iter().map(|p| p.rows).sum(), cols)
        } else {
            return Err(shape_err("concat_rows", "parts of different widths".into()));
        };
        let mut out = self.alloc_bf16(rows * cols)?;
        let mut at = 0;
        for p in parts {
            let src = p.bf16("concat_rows")?;
            let n = p.rows * p.cols;
            self.stream
                .memcpy_dtod(src, &mut out.slice_mut(at..at + n))
                .map_err(|e| CudaError::driver("cuMemcpyDtoD", e))?;
            at += n;
        }
        Ok(CudaTensor {
            buf: CudaBuf::Bf16(out),
            rows,
            cols,
        })
    }

    fn rope_qkv_write(
        &self,
        qkv: &CudaTensor,
        kv: &mut CudaKv,
        layer: usize,
        heads: usize,
        positions: &[u32],
        slots: &[u32],
        inv_freq: &[f32],
    ) -> Result<CudaTensor, BackendError> {
        let _span = self.span(|| "rope_qkv_write".into());
        let l = kv.layout;
        let hd = l.head_dim;
        let (rows, cols) = qkv.shape();
        if !prologue_fits(l, rows, cols, layer, heads, positions, slots, inv_freq) {
            return Err(shape_err(
                "rope_qkv_write",
                format!(
                    "{rows}x{cols} for {heads} heads, {} positions, {} slots",
                    positions.len(),
                    slots.len()
                ),
            ));
        }
        let (pos, dev_slots, freq) = self.rope_inputs(positions, slots, inv_freq)?;
        let mut q = self.alloc_bf16(rows * heads * hd)?;
        let (h, kvh, d) = (heads as i32, l.kv_heads as i32, hd as i32);
        let (kc, vc) = (&mut kv.k[layer], &mut kv.v[layer]);
        let mut b = self.builder(&self.kernels.rope_qkv_cache);
        b.arg(qkv.bf16("rope_qkv_write")?)
            .arg(&mut q)
            .arg(kc)
            .arg(vc)
            .arg(&*pos)
            .arg(&*dev_slots)
            .arg(&*freq)
            .arg(&h)
            .arg(&kvh)
            .arg(&d);
        let cfg = LaunchConfig {
            grid_dim: (rows as u32, (heads + l.kv_heads + 1) as u32, 1),
            block_dim: (64, 1, 1),
            shared_mem_bytes: 0,
        };
        launch(b, cfg, "elementwise", "rope_qkv_cache_heads")?;
        Ok(CudaTensor {
            buf: CudaBuf::Bf16(q),
            rows,
            cols: heads * hd,
        })
    }

    fn swiglu_packed(&self, gate_up: &CudaTensor) -> Result<CudaTensor, BackendError> {
        let _span = self.span(|| "swiglu_packed".into());
        let (rows, cols) = gate_up.shape();
        if cols % 2 != 0 {
            return Err(shape_err("swiglu_packed", format!("odd width {cols}")));
        }
        let inter = cols / 2;
        let n = rows * inter;
        let mut out = self.alloc_bf16(n)?;
        let i = inter as i32;
        if inter % 8 == 0 {
            let mut b = self.builder(&self.kernels.swiglu_packed_v8);
            b.arg(gate_up.bf16("swiglu_packed")?).arg(&mut out).arg(&i);
            let cfg = LaunchConfig {
                grid_dim: ((inter / 8).div_ceil(256) as u32, rows as u32, 1),
                block_dim: (256, 1, 1),
                shared_mem_bytes: 0,
            };
            launch(b, cfg, "elementwise", "swiglu_packed_v8")?;
        } else {
            let mut b = self.builder(&self.kernels.swiglu_packed);
            b.arg(gate_up.bf16("swiglu_packed")?)
                .arg(&mut out)
                .arg(&i)
                .arg(&n);
            launch(b, self.elems_cfg(n), "elementwise", "swiglu_packed")?;
        }
        Ok(CudaTensor {
            buf: CudaBuf::Bf16(out),
            rows,
            cols: inter,
        })
    }

    fn random_weight(
        &self,
        shape: &[usize],
        seed: u64,
        offset: f32,
        std: f32,
    ) -> Result<CudaTensor, BackendError> {
        let (rows, cols) = match shape {
            [n] => (1, *n),
            [r, c] => (*r, *c),
            other => return Err(shape_err("random_weight", format!("rank {}", other.len()))),
        };
        Ok(self.random_bf16(rows, cols, seed, offset, std)?)
    }

    fn alloc_kv(&self, layout: KvLayout) -> Result<CudaKv, BackendError> {
        let n = layout.num_blocks * layout.block_size * layout.kv_heads * layout.head_dim;
        let mut k = Vec::with_capacity(layout.layers);
        let mut v = Vec::with_capacity(layout.layers);
        for _ in 0..layout.layers {
            let z = || self.stream.alloc_zeros::<u16>(n.max(1));
            k.push(z().map_err(|e| CudaError::driver("alloc kv", e))?);
            v.push(z().map_err(|e| CudaError::driver("alloc kv", e))?);
        }
        let scores = self
            .stream
            .alloc_zeros::<f32>(
                (layout.layers * layout.num_blocks * layout.block_size * layout.kv_heads).max(1),
            )
            .map_err(|e| CudaError::driver("alloc kv scores", e))?;
        Ok(CudaKv {
            layout,
            k,
            v,
            scores,
        })
    }

    fn embed(&self, table: &CudaTensor, ids: &[u32]) -> Result<CudaTensor, BackendError> {
        let _span = self.span(|| "embed".into());
        let width = table.cols;
        if let Some(bad) = ids.iter().find(|&&i| i as usize >= table.rows) {
            return Err(shape_err(
                "embed",
                format!("token id {bad} >= vocab {}", table.rows),
            ));
        }
        let dev_ids = self.upload("ids", ids)?;
        let mut out = self.alloc_f32(ids.len() * width)?;
        let w = width as i32;
        let mut b = self.builder(&self.kernels.embed_rows);
        b.arg(table.bf16("embed")?)
            .arg(&*dev_ids)
            .arg(&mut out)
            .arg(&w);
        launch(
            b,
            rows_cfg(ids.len(), ROW_THREADS),
            "elementwise",
            "embed_rows",
        )?;
        Ok(CudaTensor {
            buf: CudaBuf::F32(out),
            rows: ids.len(),
            cols: width,
        })
    }

    fn rms_norm(
        &self,
        x: &CudaTensor,
        weight: &CudaTensor,
        eps: f32,
    ) -> Result<CudaTensor, BackendError> {
        let _span = self.span(|| "rms_norm".into());
        let CudaBuf::F32(xs) = &x.buf else {
            return Err(shape_err(
                "rms_norm",
                "expects the f32 residual stream".into(),
            ));
        };
        let mut out = self.alloc_bf16(x.rows * x.cols)?;
        let w = x.cols as i32;
        let (f, threads, name) = match v8_threads(x.cols) {
            Some(t) => (&self.kernels.rms_norm_v8, t, "rms_norm_v8"),
            None => (&self.kernels.rms_norm, ROW_THREADS, "rms_norm"),
        };
        let mut b = self.builder(f);
        b.arg(xs)
            .arg(weight.bf16("rms_norm")?)
            .arg(&mut out)
            .arg(&w)
            .arg(&eps);
        launch(b, rows_cfg(x.rows, threads), "elementwise", name)?;
        Ok(CudaTensor {
            buf: CudaBuf::Bf16(out),
            rows: x.rows,
            cols: x.cols,
        })
    }

    fn add_rms_norm(
        &self,
        residual: &mut CudaTensor,
        delta: &CudaTensor,
        weight: &CudaTensor,
        eps: f32,
    ) -> Result<CudaTensor, BackendError> {
        let _span = self.span(|| "add_rms_norm".into());
        let (rows, cols) = residual.shape();
        if delta.shape() != (rows, cols) {
            return Err(shape_err(
                "add_rms_norm",
                format!("{:?} + {:?}", (rows, cols), delta.shape()),
            ));
        }
        let mut out = self.alloc_bf16(rows * cols)?;
        let w = cols as i32;
        let d = delta.bf16("add_rms_norm")?;
        let wt = weight.bf16("add_rms_norm")?;
        let res = residual.f32_mut("add_rms_norm")?;
        let (f, threads, name) = match v8_threads(cols) {
            Some(t) => (&self.kernels.add_rms_norm_v8, t, "add_rms_norm_v8"),
            None => (&self.kernels.add_rms_norm, ROW_THREADS, "add_rms_norm"),
        };
        let mut b = self.builder(f);
        b.arg(res).arg(d).arg(wt).arg(&mut out).arg(&w).arg(&eps);
        launch(b, rows_cfg(rows, threads), "elementwise", name)?;
        Ok(CudaTensor {
            buf: CudaBuf::Bf16(out),
            rows,
            cols,
        })
    }

    fn add(&self, residual: &mut CudaTensor, delta: &CudaTensor) -> Result<(), BackendError> {
        if delta.shape() != residual.shape() {
            return Err(shape_err(
                "add",
                format!("{:?} + {:?}", residual.shape(), delta.shape()),
            ));
        }
        let n = residual.rows * residual.cols;
        let d = delta.bf16("add")?;
        let cfg = self.elems_cfg(n);
        let res = residual.f32_mut("add")?;
        let mut b = self.builder(&self.kernels.add_residual);
        b.arg(res).arg(d).arg(&n);
        launch(b, cfg, "elementwise", "add_residual")?;
        Ok(())
    }

    fn linear_swiglu(
        &self,
        x: &CudaTensor,
        gate_up: &CudaTensor,
    ) -> Result<CudaTensor, BackendError> {
        let (m, k) = x.shape();
        let (n2, wk) = gate_up.shape();
        if !self.skinny(m, k) || n2 % 4 != 0 || k != wk {
            return self.swiglu_packed(&self.linear(x, gate_up, None)?);
        }
        let inter = n2 / 2;
        let _span = self.span(|| format!("linear+swiglu gemv m={m} n={n2} k={k}"));
        let mut y = self.alloc_bf16(m * inter)?;
        let (i, kk) = (inter as i32, k as i32);
        let mut b = self.builder(&self.kernels.gemv_swiglu[m - 1]);
        b.arg(x.bf16("linear_swiglu")?)
            .arg(gate_up.bf16("linear_swiglu")?)
            .arg(&mut y)
            .arg(&i)
            .arg(&kk);
        launch(
            b,
            rows_cfg(inter / 2, 256),
            "gemv",
            &format!("gemv_swiglu_m{m}"),
        )?;
        Ok(CudaTensor {
            buf: CudaBuf::Bf16(y),
            rows: m,
            cols: inter,
        })
    }

    fn qkv_rope_write(
        &self,
        x: &CudaTensor,
        qkv: &CudaTensor,
        bias: Option<&CudaTensor>,
        kv: &mut CudaKv,
        layer: usize,
        heads: usize,
        positions: &[u32],
        slots: &[u32],
        inv_freq: &[f32],
    ) -> Result<CudaTensor, BackendError> {
        let (m, k) = x.shape();
        let l = kv.layout;
        let hd = l.head_dim;
        let (n, wk) = qkv.shape();
        let fits = wk == k
            && hd.is_multiple_of(4)
            && prologue_fits(l, m, n, layer, heads, positions, slots, inv_freq);
        if !self.skinny(m, k) || !fits {
            let projected = self.linear(x, qkv, bias)?;
            return self.rope_qkv_write(&projected, kv, layer, heads, positions, slots, inv_freq);
        }
        let _span = self.span(|| format!("qkv+rope gemv m={m} n={n} k={k}"));
        let (pos, dev_slots, freq) = self.rope_inputs(positions, slots, inv_freq)?;
        let mut q = self.alloc_bf16(m * heads * hd)?;
        let (h, kvh, d, kk) = (heads as i32, l.kv_heads as i32, hd as i32, k as i32);
        let (kc, vc) = (&mut kv.k[layer], &mut kv.v[layer]);
        let mut b = self.builder(&self.kernels.gemv_qkv_rope[m - 1]);
        b.arg(x.bf16("qkv_rope_write")?)
            .arg(qkv.bf16("qkv_rope_write")?);
        // The kernel takes a null bias pointer for "no bias".
        let null: u64 = 0;
        match bias {
            Some(bias) => b.arg(bias.bf16("qkv_rope_write bias")?),
            None => b.arg(&null),
        };
        b.arg(&mut q)
            .arg(kc)
            .arg(vc)
            .arg(&*pos)
            .arg(&*dev_slots)
            .arg(&*freq)
            .arg(&h)
            .arg(&kvh)
            .arg(&d)
            .arg(&kk);
        launch(
            b,
            rows_cfg(n / 4, 256),
            "gemv",
            &format!("gemv_qkv_rope_m{m}"),
        )?;
        Ok(CudaTensor {
            buf: CudaBuf::Bf16(q),
            rows: m,
            cols: heads * hd,
        })
    }

    fn linear(
        &self,
        x: &CudaTensor,
        w: &CudaTensor,
        bias: Option<&CudaTensor>,
    ) -> Result<CudaTensor, BackendError> {
        let (m, k) = x.shape();
        let (n, wk) = w.shape();
        if k != wk {
            return Err(shape_err(
                "linear",
                format!("x {:?} times w {:?}^T", x.shape(), w.shape()),
            ));
        }
        let skinny = self.skinny(m, k);
        let _span = self.span(|| {
            format!(
                "linear {} m={m} n={n} k={k}",
                if skinny { "gemv" } else { "cublasLt" }
            )
        });
        let mut y = self.alloc_bf16(m * n)?;
        if skinny {
            let (nn, kk) = (n as i32, k as i32);
            let mut b = self.builder(&self.kernels.gemv[m - 1]);
            b.arg(x.bf16("linear")?)
                .arg(w.bf16("linear")?)
                .arg(&mut y)
                .arg(&nn)
                .arg(&kk);
            launch(
                b,
                rows_cfg(n.div_ceil(4), 256),
                "gemv",
                &format!("gemv_m{m}"),
            )?;
        } else {
            self.gemm
                .matmul(x.bf16("linear")?, w.bf16("linear")?, &mut y, m, n, k)?;
        }
        if let Some(bias) = bias {
            let total = m * n;
            let width = n as i32;
            let mut b = self.builder(&self.kernels.add_bias);
            b.arg(&mut y)
                .arg(bias.bf16("linear bias")?)
                .arg(&width)
                .arg(&total);
            launch(b, self.elems_cfg(total), "elementwise", "add_bias")?;
        }
        Ok(CudaTensor {
            buf: CudaBuf::Bf16(y),
            rows: m,
            cols: n,
        })
    }

    fn rope(
        &self,
        x: &mut CudaTensor,
        head_dim: usize,
        positions: &[u32],
        inv_freq: &[f32],
    ) -> Result<(), BackendError> {
        let (rows, cols) = x.shape();
        if rows != positions.len() || cols % head_dim != 0 || inv_freq.len() * 2 != head_dim {
            return Err(shape_err(
                "rope",
                format!(
                    "{rows}x{cols}, {} positions, head_dim {head_dim}",
                    positions.len()
                ),
            ));
        }
        let pos = self.upload("positions", positions)?;
        let bits: Vec<u32> = inv_freq.iter().map(|f| f.to_bits()).collect();
        let freq = self.upload("inv_freq", &bits)?;
        let (w, hd) = (cols as i32, head_dim as i32);
        let CudaBuf::Bf16(xs) = &mut x.buf else {
            return Err(shape_err("rope", "expects bf16".into()));
        };
        let mut b = self.builder(&self.kernels.rope);
        b.arg(xs).arg(&*pos).arg(&*freq).arg(&w).arg(&hd);
        launch(b, rows_cfg(rows, ROW_THREADS), "elementwise", "rope")?;
        Ok(())
    }

    fn swiglu(&self, gate: &CudaTensor, up: &CudaTensor) -> Result<CudaTensor, BackendError> {
        if gate.shape() != up.shape() {
            return Err(shape_err(
                "swiglu",
                format!("{:?} vs {:?}", gate.shape(), up.shape()),
            ));
        }
        let n = gate.rows * gate.cols;
        let mut out = self.alloc_bf16(n)?;
        let mut b = self.builder(&self.kernels.swiglu);
        b.arg(gate.bf16("swiglu")?)
            .arg(up.bf16("swiglu")?)
            .arg(&mut out)
            .arg(&n);
        launch(b, self.elems_cfg(n), "elementwise", "swiglu")?;
        Ok(CudaTensor {
            buf: CudaBuf::Bf16(out),
            rows: gate.rows,
            cols: gate.cols,
        })
    }

    fn write_kv(
        &self,
        kv: &mut CudaKv,
        layer: usize,
        k: &CudaTensor,
        v: &CudaTensor,
        slots: &[u32],
    ) -> Result<(), BackendError> {
        let l = kv.layout;
        let width = l.kv_heads * l.head_dim;
        let capacity = (l.num_blocks * l.block_size) as u32;
        if k.shape() != (slots.len(), width)
            || v.shape() != k.shape()
            || layer >= l.layers
            || slots.iter().any(|&s| s >= capacity)
        {
            return Err(shape_err(
                "write_kv",
                format!(
                    "{:?} rows for {} slots of width {width}",
                    k.shape(),
                    slots.len()
                ),
            ));
        }
        let dev_slots = self.upload("slots", slots)?;
        let w = width as i32;
        let (kc, vc) = (&mut kv.k[layer], &mut kv.v[layer]);
        let mut b = self.builder(&self.kernels.write_kv);
        b.arg(k.bf16("write_kv")?)
            .arg(v.bf16("write_kv")?)
            .arg(&*dev_slots)
            .arg(kc)
            .arg(vc)
            .arg(&w);
        launch(
            b,
            rows_cfg(slots.len(), ROW_THREADS),
            "elementwise",
            "write_kv",
        )?;
        Ok(())
    }

    fn supports_h2o(&self) -> bool {
        true
    }

    fn reset_scores(&self, kv: &mut CudaKv, slots: &[u32]) -> Result<(), BackendError> {
        let _span = self.span(|| "h2o reset".into());
        h2o::reset(self, kv, slots)
    }

    fn accumulate_attention(
        &self,
        q: &CudaTensor,
        kv: &mut CudaKv,
        layer: usize,
        heads: usize,
        batch: &AttentionBatch,
        tracked: &[usize],
    ) -> Result<(), BackendError> {
        let _span = self.span(|| "h2o accumulate".into());
        h2o::accumulate(self, q, kv, layer, heads, batch, tracked)
    }

    fn attention_tracked(
        &self,
        q: &CudaTensor,
        kv: &mut CudaKv,
        layer: usize,
        heads: usize,
        batch: &AttentionBatch,
        tracked: &[usize],
    ) -> Result<CudaTensor, BackendError> {
        let _span = self.span(|| "attention + h2o".into());
        h2o::attention_tracked(self, q, kv, layer, heads, batch, tracked)
    }

    fn read_scores(&self, kv: &CudaKv, slots: &[u32]) -> Result<Vec<f32>, BackendError> {
        let _span = self.span(|| "h2o read".into());
        h2o::read(self, kv, slots)
    }

    fn compact_kv(
        &self,
        kv: &mut CudaKv,
        slots: &[u32],
        keep: &[u32],
        n: usize,
    ) -> Result<(), BackendError> {
        let _span = self.span(|| "h2o compact".into());
        h2o::compact(self, kv, slots, keep, n)
    }

    fn attention(
        &self,
        q: &CudaTensor,
        kv: &CudaKv,
        layer: usize,
        heads: usize,
        batch: &AttentionBatch,
    ) -> Result<CudaTensor, BackendError> {
        let _span = self.span(|| {
            format!(
                "attention {}",
                if batch.seqs.iter().all(|s| s.q_len == 1) {
                    "decode"
                } else {
                    "prefill"
                }
            )
        });
        Ok(attention::run(self, q, kv, layer, heads, batch)?)
    }

    fn hip_mask(
        &self,
        q: &CudaTensor,
        kv: &CudaKv,
        layer: usize,
        heads: usize,
        batch: &AttentionBatch,
    ) -> Result<Vec<u32>, BackendError> {
        let _span = self.span(|| "hip mask".into());
        Ok(attention::hip_mask(self, q, kv, layer, heads, batch)?)
    }

    fn gather_rows(&self, x: &CudaTensor, rows: &[u32]) -> Result<CudaTensor, BackendError> {
        let _span = self.span(|| "gather_rows".into());
        if let Some(bad) = rows.iter().find(|&&r| r as usize >= x.rows) {
            return Err(shape_err("gather_rows", format!("row {bad} of {}", x.rows)));
        }
        let dev_rows = self.upload("rows", rows)?;
        let mut out = self.alloc_bf16(rows.len() * x.cols)?;
        let w = x.cols as i32;
        let mut b = self.builder(&self.kernels.gather_rows);
        b.arg(x.bf16("gather_rows")?)
            .arg(&*dev_rows)
            .arg(&mut out)
            .arg(&w);
        launch(
            b,
            rows_cfg(rows.len(), ROW_THREADS),
            "elementwise",
            "gather_rows",
        )?;
        Ok(CudaTensor {
            buf: CudaBuf::Bf16(out),
            rows: rows.len(),
            cols: x.cols,
        })
    }

    fn to_host(&self, x: &CudaTensor) -> Result<(Vec<f32>, usize, usize), BackendError> {
        let data = match &x.buf {
            CudaBuf::Bf16(s) => self
                .stream
                .clone_dtoh(s)
                .map_err(|e| CudaError::driver("cuMemcpyDtoH", e))?
                .into_iter()
                .map(|b| half::bf16::from_bits(b).to_f32())
                .collect(),
            CudaBuf::F32(s) => self
                .stream
                .clone_dtoh(s)
                .map_err(|e| CudaError::driver("cuMemcpyDtoH", e))?,
        };
        let mut data: Vec<f32> = data;
        data.truncate(x.rows * x.cols);
        Ok((data, x.rows, x.cols))
    }

    fn token_log_probs(
        &self,
        logits: &CudaTensor,
        tokens: &[u32],
    ) -> Result<Vec<f64>, BackendError> {
        let _span = self.span(|| "token_log_probs".into());
        let (rows, vocab) = logits.shape();
        super::check_log_prob_tokens(rows, vocab, tokens)?;
        if rows == 0 {
            return Ok(Vec::new());
        }
        let ids = self
            .stream
            .clone_htod(tokens)
            .map_err(|e| CudaError::driver("cuMemcpyHtoD", e))?;
        // SAFETY: every element is written by the kernel (one per row) before it is read back.
        let mut out =
            unsafe { self.stream.alloc::<f32>(rows) }.map_err(|e| CudaError::driver("alloc", e))?;
        let v = vocab as i32;
        let mut b = self.builder(&self.kernels.token_log_probs);
        b.arg(logits.bf16("token_log_probs")?)
            .arg(&ids)
            .arg(&v)
            .arg(&mut out);
        launch(b, rows_cfg(rows, 512), "sampling", "token_log_probs")?;
        let host = self
            .stream
            .clone_dtoh(&out)
            .map_err(|e| CudaError::driver("cuMemcpyDtoH", e))?;
        Ok(host.into_iter().map(f64::from).collect())
    }

    fn select_tokens(
        &self,
        logits: &CudaTensor,
        temperature: f32,
        seed: u64,
    ) -> Result<Vec<u32>, BackendError> {
        let _span = self.span(|| "select_tokens".into());
        let (rows, vocab) = logits.shape();
        let mut out = self
            .stream
            .alloc_zeros::<u64>(rows.max(1))
            .map_err(|e| CudaError::driver("alloc", e))?;
        let sample: i32 = (temperature > 0.0) as i32;
        let inv_temp = if temperature > 0.0 {
            1.0 / temperature
        } else {
            1.0
        };
        const CHUNK: usize = 4096;
        let (v, chunk) = (vocab as i32, CHUNK as i32);
        let mut b = self.builder(&self.kernels.select_tokens);
        b.arg(logits.bf16("select_tokens")?)
            .arg(&v)
            .arg(&chunk)
            .arg(&mut out)
            .arg(&inv_temp)
            .arg(&seed)
            .arg(&sample);
        let cfg = LaunchConfig {
            grid_dim: (vocab.div_ceil(CHUNK).max(1) as u32, rows.max(1) as u32, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        launch(b, cfg, "sampling", "select_tokens")?;
        let keys = self
            .stream
            .clone_dtoh(&out)
            .map_err(|e| CudaError::driver("cuMemcpyDtoH", e))?;
        // The low word holds the complement of the id; a zero key means every logit was NaN.
        Ok(keys
            .iter()
            .take(rows)
            .map(|&k| if k == 0 { 0 } else { u32::MAX - (k as u32) })
            .collect())
    }

    fn synchronize(&self) -> Result<(), BackendError> {
        Ok(self.cuda_sync()?)
    }

    fn tunes_per_shape(&self) -> bool {
        self.gemm_tune
    }
}
