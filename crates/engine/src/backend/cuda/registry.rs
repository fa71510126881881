//! The kernel registry: the `kernels/*.cu` sources are embedded in the binary, compiled by NVRTC for the
//! device's architecture (`compute_90a` on Hopper) when the backend starts, and the PTX is cached on disk under
//! the hash of the source, the architecture and the NVRTC version, so a restart skips the compile.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use cudarc::driver::{CudaContext, CudaFunction, CudaModule};
use cudarc::nvrtc::{CompileOptions, Ptx};
use sha2::{Digest, Sha256};

use super::CudaError;

/// Prepended to every module: bf16 helpers, reductions, hashing.
const PRELUDE: &str = include_str!("../../../../../kernels/prelude.cuh");

/// The kernel modules: name and source.
pub const MODULES: &[(&str, &str)] = &[
    (
        "elementwise",
        include_str!("../../../../../kernels/elementwise.cu"),
    ),
    (
        "attention",
        include_str!("../../../../../kernels/attention.cu"),
    ),
    ("gemv", include_str!("../../../../../kernels/gemv.cu")),
    (
        "sampling",
        include_str!("../../../../../kernels/sampling.cu"),
    ),
    ("h2o", include_str!("../../../../../kernels/h2o.cu")),
    ("hip", include_str!("../../../../../kernels/hip.cu")),
];

/// Compiled modules of one context, by name.
pub struct KernelRegistry {
    modules: HashMap<&'static str, Arc<CudaModule>>,
    /// Seconds spent compiling (0 when every module came from the cache).
    pub compile_seconds: f64,
    /// Modules loaded from the disk cache.
    pub cached: usize,
}

impl std::fmt::Debug for KernelRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelRegistry")
            .field("modules", &self.modules.len())
            .field("compile_seconds", &self.compile_seconds)
            .finish()
    }
}

/// The NVRTC architecture for a compute capability: the `a` variant on Hopper (9.0), else `compute_XY`.
pub fn arch_for(major: i32, minor: i32) -> String {
    if (major, minor) == (9, 0) {
        "compute_90a".into()
    } else {
        format!("compute_{major}{minor}")
    }
}

/// The cache key of a module: hash of prelude, source, architecture and NVRTC version.
pub fn cache_key(name: &str, source: &str, arch: &str, nvrtc_version: (i32, i32)) -> String {
    let mut h = Sha256::new();
    for part in [PRELUDE, source, arch] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    h.update(format!("{nvrtc_version:?}").as_bytes());
    format!("{name}-{arch}-{}.ptx", &hex::encode(h.finalize())[..16])
}

impl KernelRegistry {
    /// Compiles (or loads from the cache folder `cache`, when given) every module for `ctx`'s device.
    pub fn load(ctx: &Arc<CudaContext>, cache: Option<&Path>) -> Result<Self, CudaError> {
        let (major, minor) = ctx
            .compute_capability()
            .map_err(|e| CudaError::driver("compute_capability", e))?;
        let arch = arch_for(major, minor);
        let version = nvrtc_version()?;
        let dir = cache;
        let started = Instant::now();
        let mut cached = 0;
        let mut compile_seconds = 0.0;
        let mut modules = HashMap::new();
        for &(name, source) in MODULES {
            let key = cache_key(name, source, &arch, version);
            let path = dir.as_ref().map(|d| d.join(&key));
            let ptx_text = match path.as_ref().and_then(|p| std::fs::read_to_string(p).ok()) {
                Some(text) => {
                    cached += 1;
                    text
                }
                None => {
                    let t = Instant::now();
                    let text = compile(name, source, &arch)?;
                    let secs = t.elapsed().as_secs_f64();
                    compile_seconds += secs;
                    tracing::info!(module = name, arch = %arch, seconds = secs, "compiled CUDA kernels with NVRTC");
                    if let (Some(dir), Some(path)) = (&dir, &path) {
                        // A cache that cannot be written only costs the next start a compile.
                        let written =
                            std::fs::create_dir_all(dir).and_then(|_| std::fs::write(path, &text));
                        if let Err(e) = written {
                            tracing::warn!(path = %path.display(), error = %e, "could not cache compiled kernels");
                        }
                    }
                    text
                }
            };
            let module =
                ctx.load_module(Ptx::from_src(ptx_text))
                    .map_err(|e| CudaError::Kernel {
                        module: name.into(),
                        kernel: "(module load)".into(),
                        reason: e.to_string(),
                    })?;
            modules.insert(name, module);
        }
        tracing::info!(
            modules = modules.len(),
            cached,
            seconds = started.elapsed().as_secs_f64(),
            "CUDA kernel registry ready"
        );
        Ok(Self {
            modules,
            compile_seconds,
            cached,
        })
    }

    /// The kernel `kernel` of module `module`.
    pub fn function(&self, module: &str, kernel: &str) -> Result<CudaFunction, CudaError> {
        let m = self.modules.get(module).ok_or_else(|| CudaError::Kernel {
            module: module.into(),
            kernel: kernel.into(),
            reason: "no such module".into(),
        })?;
        m.load_function(kernel).map_err(|e| CudaError::Kernel {
            module: module.into(),
            kernel: kernel.into(),
            reason: e.to_string(),
        })
    }
}

/// NVRTC's (major, minor) version.
fn nvrtc_version() -> Result<(i32, i32), CudaError> {
    let (mut major, mut minor) = (0, 0);
    // SAFETY: two live out-parameters; the library was found before the backend started.
    let status = unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) };
    if status != cudarc::nvrtc::sys::nvrtcResult::NVRTC_SUCCESS {
        return Err(CudaError::Compile {
            module: "(all)".into(),
            log: format!("nvrtcVersion failed: {status:?}"),
        });
    }
    Ok((major, minor))
}

/// Compiles one module to PTX; a compile error carries NVRTC's log.
fn compile(name: &str, source: &str, arch: &str) -> Result<String, CudaError> {
    let src = format!("{PRELUDE}\n{source}");
    let opts = CompileOptions {
        options: vec![format!("--gpu-architecture={arch}"), "--std=c++17".into()],
        name: Some(format!("{name}.cu")),
        ..Default::default()
    };
    let ptx = cudarc::nvrtc::compile_ptx_with_opts(src, opts).map_err(|e| CudaError::Compile {
        module: name.into(),
        log: format!("{e:?}"),
    })?;
    Ok(ptx.to_src())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arch_names() {
        assert_eq!(arch_for(9, 0), "compute_90a");
        assert_eq!(arch_for(8, 9), "compute_89");
    }

    #[test]
    fn cache_key_changes_with_source_arch_and_version() {
        let a = cache_key("m", "src", "compute_90a", (13, 0));
        assert!(
            a.starts_with("m-compute_90a-") && a.ends_with(".ptx"),
            "{a}"
        );
        assert_ne!(a, cache_key("m", "src2", "compute_90a", (13, 0)));
        assert_ne!(a, cache_key("m", "src", "compute_89", (13, 0)));
        assert_ne!(a, cache_key("m", "src", "compute_90a", (13, 1)));
        assert_eq!(a, cache_key("m", "src", "compute_90a", (13, 0)));
    }

    #[test]
    fn every_module_defines_extern_c_kernels() {
        for (name, src) in MODULES {
            assert!(src.contains("extern \"C\" __global__"), "{name}");
        }
    }
}
