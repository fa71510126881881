//! Which backend runs the model: `--device auto|cpu|cuda|cuda:N` (`[engine] device`). `auto` takes the first
//! CUDA device when the driver, NVRTC and cuBLASLt load and the device opens, else the CPU, and logs why.

use std::str::FromStr;

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

/// Opens the device: `cuda:N` fails when that device cannot be used; `auto` falls back to the CPU.
pub fn resolve(spec: DeviceSpec) -> Result<Resolved, CudaError> {
    match spec {
        DeviceSpec::Cpu => Ok(Resolved::Cpu),
        DeviceSpec::Cuda(n) => Ok(Resolved::Cuda(Box::new(CudaBackend::new(n)?))),
        DeviceSpec::Auto => match CudaBackend::new(0) {
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
