//! The two ceilings of the device, measured in-process for the benchmarks: a large bf16 matrix product through
//! the same cuBLASLt path as the model, and a device-to-device copy.

use std::time::Instant;

use super::{CudaBackend, CudaBuf, CudaError};

/// (bf16 GEMM FLOP/s on 8192³ random operands, copy bandwidth in bytes/s counting reads and writes): medians of
/// 10 runs after 3 of warm-up.
pub fn measure(be: &CudaBackend) -> Result<(f64, f64), CudaError> {
    const N: usize = 8192;
    let a = be.random_bf16(N, N, 1, 0.0, 1.0)?;
    let b = be.random_bf16(N, N, 2, 0.0, 1.0)?;
    let mut c = be.alloc_bf16(N * N)?;
    let (CudaBuf::Bf16(a), CudaBuf::Bf16(b)) = (&a.buf, &b.buf) else {
        unreachable!("random_bf16 makes bf16 tensors")
    };
    let gemm = time(be, || be.gemm.matmul(a, b, &mut c, N, N, N))?;
    let n = 1usize << 30; // 2 GiB of bf16
    let src = be.random_bf16(1, n, 3, 0.0, 1.0)?;
    let CudaBuf::Bf16(src) = &src.buf else {
        unreachable!("random_bf16 makes bf16 tensors")
    };
    let mut dst = be.alloc_bf16(n)?;
    let copy = time(be, || {
        be.stream
            .memcpy_dtod(src, &mut dst)
            .map_err(|e| CudaError::driver("cuMemcpyDtoD", e))
    })?;
    Ok((2.0 * (N * N * N) as f64 / gemm, 2.0 * 2.0 * n as f64 / copy))
}

fn time(be: &CudaBackend, mut f: impl FnMut() -> Result<(), CudaError>) -> Result<f64, CudaError> {
    for _ in 0..3 {
        f()?;
    }
    be.cuda_sync()?;
    let mut times = Vec::new();
    for _ in 0..10 {
        let t = Instant::now();
        f()?;
        be.cuda_sync()?;
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}
