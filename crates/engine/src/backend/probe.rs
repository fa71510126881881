//! What a backend can say about its device beyond the [`Backend`](super::Backend) trait: its name, peak memory, measured rooflines
//! and per-operation profiles (the benchmarks' view of a device).

use super::cpu::CpuBackend;
use super::cuda::CudaBackend;
use super::BackendError;

/// What a backend can say about the device beyond the [`Backend`](super::Backend) trait.
pub trait DeviceProbe {
    /// The device, in words.
    fn device(&self) -> String;
    /// Restarts peak-memory tracking.
    fn reset_peak(&self) {}
    /// Peak device bytes in use since the last reset, where the device tracks it.
    fn peak_bytes(&self) -> Option<u64> {
        None
    }
    /// Measured bf16 GEMM rate (FLOP/s) and device copy bandwidth (bytes/s), where measurable.
    fn rooflines(&self) -> Result<Option<(f64, f64)>, BackendError> {
        Ok(None)
    }
    /// Starts or stops per-operation device timing, where supported.
    fn set_profiling(&self, _on: bool) {}
    /// Device milliseconds and calls per operation since profiling started.
    fn take_profile(&self) -> Result<Vec<(String, f64, usize)>, BackendError> {
        Ok(Vec::new())
    }
}

impl DeviceProbe for CpuBackend {
    fn device(&self) -> String {
        format!(
            "CPU ({} threads)",
            std::thread::available_parallelism().map_or(1, |n| n.get())
        )
    }
}

impl DeviceProbe for CudaBackend {
    fn device(&self) -> String {
        self.device_name().to_string()
    }
    fn reset_peak(&self) {
        let _ = self.reset_peak_memory();
    }
    fn peak_bytes(&self) -> Option<u64> {
        self.peak_memory().ok()
    }
    fn rooflines(&self) -> Result<Option<(f64, f64)>, BackendError> {
        Ok(Some(super::cuda::roofline::measure(self)?))
    }
    fn set_profiling(&self, on: bool) {
        CudaBackend::set_profiling(self, on);
    }
    fn take_profile(&self) -> Result<Vec<(String, f64, usize)>, BackendError> {
        Ok(CudaBackend::take_profile(self)?)
    }
}
