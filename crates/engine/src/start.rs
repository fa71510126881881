//! Starting an engine from its configuration: the one place that picks the device (`engine.device`), loads the
//! model (a Hugging Face directory or `synthetic:NAME[@SEED]`) and, for speculative decoding, the draft model on the
//! same device, and starts the engine thread.

use std::cell::Cell;
use std::sync::Arc;

use crate::backend::cpu::CpuBackend;
use crate::backend::cuda::CudaError;
use crate::backend::probe::DeviceProbe;
use crate::backend::Backend;
use crate::device::{self, CudaConfig, DeviceParseError, DeviceSpec, Resolved};
use crate::llama::{LlamaError, LlamaModel};
use crate::model::synthetic::{
    parse_synthetic, synthetic_config, synthetic_tokenizer, MAX_CPU_SYNTHETIC_PARAMS,
};
use crate::model::{ModelFiles, ModelTokenizer, SYNTHETIC_PREFIX};
use crate::prefill::PrefillError;
use crate::runner::{Engine, EngineConfig};
use crate::speculative::DraftWeights;
use crate::speculative::SpeculationMethod;

/// Why an engine could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// `engine.device` is not a device name.
    #[error(transparent)]
    DeviceName(#[from] DeviceParseError),
    /// The CUDA device could not be opened.
    #[error("cannot open the CUDA device: {0}")]
    Device(#[source] CudaError),
    /// The device resolved to CUDA once and to the CPU when opened again (for a second model).
    #[error("the CUDA device could not be opened again for a second model")]
    DeviceChanged,
    /// A model could not be loaded.
    #[error("cannot load the model `{spec}`: {source}")]
    Model {
        /// The model asked for.
        spec: String,
        /// What went wrong.
        #[source]
        source: LlamaError,
    },
    /// The draft model does not share the target's vocabulary.
    #[error("the draft model's vocabulary ({draft} tokens) differs from the target's ({target})")]
    DraftVocabulary {
        /// The target's vocabulary size.
        target: usize,
        /// The draft's vocabulary size.
        draft: usize,
    },
    /// `engine.attention` is invalid.
    #[error("engine.{0}")]
    Attention(#[source] crate::hip::HipError),
    /// The draft model's cache could not be set up.
    #[error("draft model: {0}")]
    Draft(#[source] LlamaError),
    /// The speculative decoding settings are invalid.
    #[error("speculative decoding: {0}")]
    Speculation(String),
    /// The KV cache could not be allocated.
    #[error("cannot allocate the KV cache: {0}")]
    KvCache(#[source] LlamaError),
    /// The warm-up passes failed.
    #[error("warm-up: {0}")]
    WarmUp(#[source] PrefillError),
    /// The engine thread could not be spawned.
    #[error("cannot spawn the engine thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// Work generic over the backend, run by [`on_device`] on the backend its device resolved to.
pub trait BackendTask {
    /// What the work returns.
    type Output;
    /// Runs the work. `backend` makes a backend on the device, one per model (the first call hands over the
    /// instance that was opened to resolve the device; later ones open their own, with a stream of their own).
    fn run<B: Backend + DeviceProbe>(
        self,
        backend: &dyn Fn() -> Result<B, StartError>,
    ) -> Self::Output;
}

/// Resolves `device` (`auto` falls back to the CPU; CUDA with `cuda`'s knobs) and runs `task` on it: the one place
/// a device is chosen.
pub fn on_device<T: BackendTask>(
    device: DeviceSpec,
    cuda: &CudaConfig,
    task: T,
) -> Result<T::Output, StartError> {
    match device::resolve_with(device, cuda).map_err(StartError::Device)? {
        Resolved::Cpu => Ok(task.run(&|| Ok(CpuBackend))),
        Resolved::Cuda(first) => {
            let first = Cell::new(Some(*first));
            let next = || match first.take() {
                Some(backend) => Ok(backend),
                None => match device::resolve_with(device, cuda).map_err(StartError::Device)? {
                    Resolved::Cuda(backend) => Ok(*backend),
                    Resolved::Cpu => Err(StartError::DeviceChanged),
                },
            };
            Ok(task.run(&next))
        }
    }
}

/// Starts an engine for the model `spec` as `config` says: the device (`auto` falls back to the CPU), the model,
/// and the draft model when `config.speculative.method` is `draft`. Blocks while the model loads: call it off the
/// async runtime.
pub fn open_engine(spec: &str, config: &EngineConfig) -> Result<Engine, StartError> {
    let device: DeviceSpec = config.device.parse()?;
    let draft = match config.speculative.method {
        SpeculationMethod::Draft => config.speculative.draft_model.as_deref(),
        _ => None,
    };
    on_device(
        device,
        &config.cuda,
        OpenEngine {
            spec,
            draft,
            config,
        },
    )?
}

/// [`open_engine`]'s work on the resolved backend.
struct OpenEngine<'a> {
    spec: &'a str,
    draft: Option<&'a str>,
    config: &'a EngineConfig,
}

impl BackendTask for OpenEngine<'_> {
    type Output = Result<Engine, StartError>;

    fn run<B: Backend + DeviceProbe>(
        self,
        backend: &dyn Fn() -> Result<B, StartError>,
    ) -> Self::Output {
        let model_error = |spec: &str| {
            let spec = spec.to_string();
            move |source| StartError::Model { spec, source }
        };
        let (model, tokenizer, name) =
            load_model(backend()?, self.spec).map_err(model_error(self.spec))?;
        let tokenizer = Arc::new(tokenizer);
        match self.draft {
            Some(d) => {
                let quantize = self.config.speculative.draft_weights;
                let (draft, _, _) = load_draft(backend()?, d, quantize).map_err(model_error(d))?;
                Engine::start_with_draft(model, draft, tokenizer, name, self.config)
            }
            None => Engine::start(model, tokenizer, name, self.config),
        }
    }
}

/// Loads the draft model `spec` on `backend` as [`load_model`] does, its dense matrices quantized to Q8_0 when
/// `weights` says so for this backend ([`DraftWeights::quantize_on`]).
pub fn load_draft<B: Backend>(
    backend: B,
    spec: &str,
    weights: DraftWeights,
) -> Result<(LlamaModel<B>, ModelTokenizer, String), LlamaError> {
    if !weights.quantize_on(backend.name()) || spec.starts_with(SYNTHETIC_PREFIX) {
        return load_model(backend, spec);
    }
    let mut files = ModelFiles::load(spec)?;
    files.weights = files
        .weights
        .quantize_dense(candle_core::quantized::GgmlDType::Q8_0)?;
    let model = LlamaModel::new(backend, &files)?;
    Ok((model, files.tokenizer, files.name))
}

/// Loads `spec` on `backend`: a model directory, or `synthetic:NAME[@SEED]` (built on the host and uploaded, or,
/// above [`MAX_CPU_SYNTHETIC_PARAMS`] or from 1B parameters on a GPU, drawn on the device by
/// [`LlamaModel::synthetic`]). Returns the model, its tokenizer and its name.
pub fn load_model<B: Backend>(
    backend: B,
    spec: &str,
) -> Result<(LlamaModel<B>, ModelTokenizer, String), LlamaError> {
    if let Some(name) = spec.strip_prefix(SYNTHETIC_PREFIX) {
        let (name, seed) = parse_synthetic(name)?;
        let config = synthetic_config(name)?;
        // Big models are drawn on the device: always above the host limit, and on a GPU from 1B parameters (the
        // host would take tens of seconds to draw them).
        let on_device = config.param_count() > MAX_CPU_SYNTHETIC_PARAMS
            || (backend.name() != "cpu" && config.param_count() > 1_000_000_000);
        if on_device {
            let model = LlamaModel::synthetic(backend, &config, seed)?;
            return Ok((
                model,
                synthetic_tokenizer(config.vocab_size),
                spec.to_string(),
            ));
        }
    }
    let files = ModelFiles::load(spec)?;
    let model = LlamaModel::new(backend, &files)?;
    Ok((model, files.tokenizer, files.name))
}
