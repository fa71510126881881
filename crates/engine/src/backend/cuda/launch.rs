//! Kernel launches through `cuLaunchKernelEx`, so that each launch can carry the programmatic-dependent-launch
//! attribute (Hopper and later): the next kernel on the stream may then start while this one finishes, runs up to
//! its `griddepcontrol.wait` (the `pdl_wait` of `kernels/prelude.cuh`) and waits there for the previous grid to
//! complete and its writes to be visible. Every kernel in `kernels/` waits before it touches anything an earlier
//! launch wrote; the GEMVs stream their first weights before waiting (weights are never written on the device),
//! which hides most of the launch and ramp-up gap between the small products of a decode step.

use std::ffi::c_void;
use std::marker::PhantomData;

use cudarc::driver::sys;
use cudarc::driver::{
    CudaFunction, CudaSlice, CudaStream, CudaView, DevicePtr, DevicePtrMut, LaunchConfig,
};

use super::CudaError;

/// Device pointers one launch can take (the largest kernel signature has 17 parameters).
const MAX_POINTERS: usize = 24;

/// The arguments of one kernel launch, in the order of the kernel's parameters.
pub(super) struct KernelArgs<'a> {
    stream: &'a CudaStream,
    func: &'a CudaFunction,
    pdl: bool,
    /// Device addresses of buffer arguments; boxed so the addresses taken in `params` stay put.
    pointers: Box<[sys::CUdeviceptr; MAX_POINTERS]>,
    used: usize,
    /// One address per kernel parameter: of a caller's scalar, or of an entry of `pointers`.
    params: Vec<*mut c_void>,
    _borrows: PhantomData<&'a ()>,
}

/// Adds one argument of type `A` to a launch.
pub(super) trait PushArg<A> {
    /// Appends `arg` as the next kernel parameter.
    fn arg(&mut self, arg: A) -> &mut Self;
}

impl<'a> KernelArgs<'a> {
    /// A launch of `func` on `stream`, with programmatic dependent launch when `pdl`.
    pub(super) fn new(stream: &'a CudaStream, func: &'a CudaFunction, pdl: bool) -> Self {
        Self {
            stream,
            func,
            pdl,
            pointers: Box::new([0; MAX_POINTERS]),
            used: 0,
            params: Vec::with_capacity(20),
            _borrows: PhantomData,
        }
    }

    fn push_pointer(&mut self, ptr: sys::CUdeviceptr) -> &mut Self {
        assert!(
            self.used < MAX_POINTERS,
            "more than {MAX_POINTERS} buffer arguments"
        );
        self.pointers[self.used] = ptr;
        let at: *mut sys::CUdeviceptr = &mut self.pointers[self.used];
        self.params.push(at.cast());
        self.used += 1;
        self
    }

    /// Launches the kernel with `cfg`; failures name `module` and `kernel`.
    pub(super) fn launch(
        mut self,
        cfg: LaunchConfig,
        module: &str,
        kernel: &str,
    ) -> Result<(), CudaError> {
        let err = |reason: String| CudaError::Kernel {
            module: module.into(),
            kernel: kernel.into(),
            reason,
        };
        self.stream
            .context()
            .bind_to_thread()
            .map_err(|e| err(format!("{e:?}")))?;
        // SAFETY: an all-zero attribute value is valid (a plain C union of integers and structs of integers).
        let mut value: sys::CUlaunchAttributeValue = unsafe { std::mem::zeroed() };
        value.programmaticStreamSerializationAllowed = 1;
        let mut attr = sys::CUlaunchAttribute {
            id: sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION,
            pad: [0; 4],
            value,
        };
        let config = sys::CUlaunchConfig {
            gridDimX: cfg.grid_dim.0,
            gridDimY: cfg.grid_dim.1,
            gridDimZ: cfg.grid_dim.2,
            blockDimX: cfg.block_dim.0,
            blockDimY: cfg.block_dim.1,
            blockDimZ: cfg.block_dim.2,
            sharedMemBytes: cfg.shared_mem_bytes,
            hStream: self.stream.cu_stream(),
            attrs: &mut attr,
            numAttrs: u32::from(self.pdl),
        };
        // SAFETY: every call site pushes the arguments in the order and of the types of the kernel's signature in
        // kernels/<module>.cu, with buffers sized for the grid it launches (tests/cuda_parity.rs checks each
        // kernel against the CPU backend); `params` points at scalars borrowed for 'a and at `self.pointers`, all
        // alive for this call, and the driver copies the parameters before returning.
        unsafe {
            sys::cuLaunchKernelEx(
                &config,
                self.func.cu_function(),
                self.params.as_mut_ptr(),
                std::ptr::null_mut(),
            )
        }
        .result()
        .map_err(|e| err(format!("{e:?}")))
    }
}

macro_rules! scalar_args {
    ($($t:ty),*) => {$(
        impl<'a, 'b: 'a> PushArg<&'b $t> for KernelArgs<'a> {
            fn arg(&mut self, arg: &'b $t) -> &mut Self {
                self.params.push((arg as *const $t).cast_mut().cast());
                self
            }
        }
    )*};
}
scalar_args!(i32, u32, f32, u64, usize);

impl<'a, 'b: 'a, T> PushArg<&'b CudaSlice<T>> for KernelArgs<'a> {
    fn arg(&mut self, arg: &'b CudaSlice<T>) -> &mut Self {
        let (ptr, _sync) = arg.device_ptr(self.stream);
        self.push_pointer(ptr)
    }
}

impl<'a, 'b: 'a, T> PushArg<&'b mut CudaSlice<T>> for KernelArgs<'a> {
    fn arg(&mut self, arg: &'b mut CudaSlice<T>) -> &mut Self {
        let (ptr, _sync) = arg.device_ptr_mut(self.stream);
        self.push_pointer(ptr)
    }
}

impl<'a, 'b: 'a, 'c: 'b, T> PushArg<&'b CudaView<'c, T>> for KernelArgs<'a> {
    fn arg(&mut self, arg: &'b CudaView<'c, T>) -> &mut Self {
        let (ptr, _sync) = arg.device_ptr(self.stream);
        self.push_pointer(ptr)
    }
}
