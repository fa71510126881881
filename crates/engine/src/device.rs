//! Which backend runs the model: `--device auto|cpu|cuda|cuda:N` (`[engine] device`). `auto` takes the first
//! CUDA device when the driver, NVRTC and cuBLASLt load and the device opens, else the CPU, and logs why.

use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::backend::cuda::{CudaBackend, CudaError};

/// A device asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpec {
    /// CUDA device 0 when usable, else the CPU.
    Auto,
    /// The CPU backend.
    Cpu,
    /// CUDA device N.
    Cuda(usize),
}

/// A device string that is none of `auto`, `cpu`, `cuda`, `cuda:N`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown device `{0}`: expected auto, cpu, cuda or cuda:N")]
pub struct DeviceParseError(pub String);

impl FromStr for DeviceSpec {
    type Err = DeviceParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" | "gpu" => Ok(Self::Cuda(0)),
            other => other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Self::Cuda)
                .ok_or_else(|| DeviceParseError(s.to_string())),
        }
    }
}

impl std::fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Auto => write!(f, "auto"),
            Self::Cpu => write!(f, "cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// The backend a spec resolved to.
#[derive(Debug)]
pub enum Resolved {
    /// Run on the CPU.
    Cpu,
    /// Run on this CUDA device.
    Cuda(Box<CudaBackend>),
}

/// Which kernel runs decode attention on CUDA.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DecodeAttention {
    /// On the tensor cores (`attn_decode_mma_d*`).
    #[default]
    Mma,
    /// On the CUDA cores (`attn_decode_d*`), the earlier kernel.
    Simt,
}

/// The CUDA backend's performance knobs (`[engine.cuda]`); the defaults are what the benchmarks found fastest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CudaConfig {
    /// Products of at most this many rows take the skinny-product kernels (`kernels/gemv.cu`), capped at 8;
    /// 0 sends every product to cuBLASLt.
    pub gemv_rows: usize,
    /// Autotune cuBLASLt's algorithm at the first product of each shape bucket (and warm up per row bucket).
    pub gemm_tune: bool,
    /// Programmatic dependent launch, on compute capability 9.0 and later.
    pub pdl: bool,
    /// The decode attention kernel.
    pub decode_attention: DecodeAttention,
    /// Fewest key tiles of a decode-attention split.
    pub decode_min_tiles: usize,
    /// Decode-attention blocks per multiprocessor that the split of the context aims at.
    pub decode_blocks_per_sm: usize,
    /// Where compiled kernels (PTX) are cached; none: compiled at every start (the server's configuration fills
    /// in `~/.cache/engram/kernels`).
    pub kernel_cache: Option<PathBuf>,
}

impl Default for CudaConfig {
    fn default() -> Self {
        Self {
            gemv_rows: crate::backend::cuda::GEMV_DEFAULT_ROWS,
            gemm_tune: true,
            pdl: true,
            decode_attention: DecodeAttention::Mma,
            decode_min_tiles: crate::backend::cuda::attention::MIN_TILES_PER_SPLIT,
            decode_blocks_per_sm: crate::backend::cuda::attention::BLOCKS_PER_SM,
            kernel_cache: None,
        }
    }
}

impl CudaConfig {
    /// Checks the counts: a split needs at least one tile and one block per multiprocessor.
    pub fn validate(&self) -> Result<(), String> {
        if self.decode_min_tiles == 0 {
            return Err("engine.cuda.decode_min_tiles must be at least 1".into());
        }
        if self.decode_blocks_per_sm == 0 {
            return Err("engine.cuda.decode_blocks_per_sm must be at least 1".into());
        }
        Ok(())
    }
}

/// Opens the device with the default CUDA knobs: see [`resolve_with`].
pub fn resolve(spec: DeviceSpec) -> Result<Resolved, CudaError> {
    resolve_with(spec, &CudaConfig::default())
}

/// Opens the device with `cuda`'s knobs: `cuda:N` fails when that device cannot be used; `auto` falls back to
/// the CPU.
pub fn resolve_with(spec: DeviceSpec, cuda: &CudaConfig) -> Result<Resolved, CudaError> {
    match spec {
        DeviceSpec::Cpu => Ok(Resolved::Cpu),
        DeviceSpec::Cuda(n) => Ok(Resolved::Cuda(Box::new(CudaBackend::with_config(n, cuda)?))),
        DeviceSpec::Auto => match CudaBackend::with_config(0, cuda) {
            Ok(b) => {
                tracing::info!(device = b.device_name(), "device auto: using cuda:0");
                Ok(Resolved::Cuda(Box::new(b)))
            }
            Err(e) => {
                tracing::info!(reason = %e, "device auto: using the CPU");
                Ok(Resolved::Cpu)
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_device_specs() {
        assert_eq!("auto".parse(), Ok(DeviceSpec::Auto));
        assert_eq!("cpu".parse(), Ok(DeviceSpec::Cpu));
        assert_eq!("cuda".parse(), Ok(DeviceSpec::Cuda(0)));
        assert_eq!("cuda:3".parse(), Ok(DeviceSpec::Cuda(3)));
        let err = "tpu".parse::<DeviceSpec>().unwrap_err();
        assert!(err.to_string().contains("cuda:N"), "{err}");
        assert!("cuda:x".parse::<DeviceSpec>().is_err());
        assert_eq!(DeviceSpec::Cuda(2).to_string(), "cuda:2");
    }

    #[test]
    fn explicit_cuda_without_a_device_is_a_clear_error_and_auto_falls_back() {
        if super::super::backend::cuda::device_count() > 0 {
            return; // this machine has a GPU: the fallback cannot be observed here
        }
        let err = resolve(DeviceSpec::Cuda(0)).unwrap_err();
        assert!(matches!(err, CudaError::Unavailable(_)), "{err}");
        assert!(matches!(resolve(DeviceSpec::Auto).unwrap(), Resolved::Cpu));
    }
}
