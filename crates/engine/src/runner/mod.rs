//! The engine: one thread that owns the model, the KV cache and the scheduler, and runs steps while there is work
//! (continuous batching with Dynamic SplitFuse). Requests arrive over a channel; tokens leave on each request's own
//! stream; a request whose stream is dropped is cancelled and its KV blocks freed at the next step.

use std::borrow::Cow;

use super::backend::Backend;
use super::constrain::JsonState;
use super::device::CudaConfig;
use super::generator::{
    EngineError, EngineStats, FinishReason, GenerationEvent, GenerationRequest, Generator, Usage,
};
use super::h2o::H2oState;
use super::h2o_decode::{evict_due, EvictionTimes};
use super::hip::{AttentionMode, HipError, HipParams};
use super::kv_cache::{KvCache, KvCacheConfig};
use super::llama::{LlamaModel, StepBatch};
use super::model::ModelTokenizer;
use super::prefill::{push_chunk, push_chunk_at};
use super::sampling::{Sampler, StopMatcher};
use super::scheduler::{ChunkKind, Scheduler, SchedulerConfig, SeqState};
use super::score::{score_continuations, Scores};
use super::score_segments::{score_segmented, SegmentedScoring};
use super::speculative::draft::DraftModel;
use super::speculative::speculator::Speculator;
use super::speculative::{AdaptiveK, Proposal, SpeculativeConfig};
use super::start::StartError;
use super::warmup::{warm_up, warmup_rows};
use crate::metrics;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Instant;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

mod emit;
use emit::Sampling;

/// Engine settings (`[engine]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineConfig {
    /// `synthetic:NAME` or a Hugging Face model directory; none: no generation endpoints.
    pub model: Option<String>,
    /// Where the model runs: `auto` (CUDA device 0 when usable, else the CPU), `cpu`, `cuda` or `cuda:N`.
    pub device: String,
    /// Tokens per KV block.
    pub block_size: usize,
    /// Memory for the KV cache, MiB.
    pub kv_cache_mib: usize,
    /// Tokens per step (Dynamic SplitFuse budget).
    pub token_budget: usize,
    /// Most sequences generating at once.
    pub max_sequences: usize,
    /// Most requests waiting for admission before new ones are refused.
    pub max_waiting: usize,
    /// Speculative decoding (`[engine.speculative]`).
    pub speculative: SpeculativeConfig,
    /// The CUDA backend's performance knobs (`[engine.cuda]`).
    pub cuda: CudaConfig,
    /// How requests attend unless they say otherwise (`[engine.attention]`: `kind = "dense"`, or `kind = "hip"`
    /// with HiP's parameters).
    pub attention: AttentionMode,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            model: None,
            device: "auto".into(),
            block_size: 16,
            kv_cache_mib: 512,
            token_budget: 512,
            max_sequences: 64,
            max_waiting: 256,
            speculative: SpeculativeConfig::default(),
            cuda: CudaConfig::default(),
            attention: AttentionMode::Dense {},
        }
    }
}

enum Command {
    Submit {
        id: u64,
        request: GenerationRequest,
        events: UnboundedSender<GenerationEvent>,
        arrived: Instant,
    },
    /// Teacher-forced scoring of (context, continuation) pairs, run between steps.
    Score {
        pairs: Vec<(Vec<u32>, Vec<u32>)>,
        reply: mpsc::Sender<Result<Scores, EngineError>>,
    },
    /// Teacher-forced scoring with segments encoded once, run between steps.
    ScoreSegmented {
        request: SegmentedScoring,
        reply: mpsc::Sender<Result<Scores, EngineError>>,
    },
    Shutdown,
}

/// Gives the chunk just pushed to `batch` the request's sparse attention.
fn set_attention(batch: &mut StepBatch, hip: Option<HipParams>) {
    if let Some(chunk) = batch.seqs.last_mut() {
        chunk.hip = hip;
    }
}

/// Cache sequence ids of scoring calls start here, far from request ids.
const SCORE_SEQ_BASE: u64 = 1 << 62;

/// A request being served.
struct Active {
    request: GenerationRequest,
    events: UnboundedSender<GenerationEvent>,
    generated: Vec<u32>,
    sampler: Sampler,
    stops: StopMatcher,
    /// Text of `generated` already decoded (to emit only what is new).
    decoded: String,
    arrived: Instant,
    last_token: Option<Instant>,
    /// Where a constrained request's JSON stands.
    json: Option<JsonState>,
    /// Speculative decoding: the proposal length (`None` without speculation), the draft's generator, and counts.
    k: Option<AdaptiveK>,
    draft_sampler: Sampler,
    target_steps: usize,
    proposed: usize,
    accepted: usize,
    /// H2O eviction under the request's `kv_budget`.
    h2o: Option<H2oState>,
    /// HiP sparse attention for the request's chunks.
    hip: Option<HipParams>,
}

impl Active {
    /// `len` tokens from `start` of what the sequence prefills: its prompt, then (after a preemption) the tokens
    /// it generated before.
    fn context(&self, start: usize, len: usize) -> Cow<'_, [u32]> {
        let prompt = &self.request.prompt;
        if start + len <= prompt.len() {
            Cow::Borrowed(&prompt[start..start + len])
        } else {
            Cow::Owned(
                prompt
                    .iter()
                    .chain(&self.generated)
                    .skip(start)
                    .take(len)
                    .copied()
                    .collect(),
            )
        }
    }
}

/// Tokens an H2O sequence may hold past its budget before it evicts (four blocks of 16: evicting in rounds frees
/// whole blocks, and on the H200 a round every 64 steps decoded 1.5x faster than one every 16, BENCHMARKS.md).
pub const H2O_SLACK: usize = 64;

/// The running engine; cheap to share.
pub struct Engine {
    name: String,
    device: &'static str,
    tokenizer: Arc<ModelTokenizer>,
    max_context: usize,
    kv_tokens: usize,
    commands: Mutex<mpsc::Sender<Command>>,
    next_id: AtomicU64,
    stats: Arc<Mutex<EngineStats>>,
    max_waiting: usize,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("model", &self.name).finish()
    }
}

impl Engine {
    /// Starts the engine thread for `model`, with the speculative decoding `config.speculative` asks for (a draft
    /// model must be given through [`Engine::start_with_draft`]).
    pub fn start<B: Backend>(
        model: LlamaModel<B>,
        tokenizer: Arc<ModelTokenizer>,
        name: String,
        config: &EngineConfig,
    ) -> Result<Self, StartError> {
        let spec =
            Speculator::from_config(&config.speculative, None).map_err(StartError::Speculation)?;
        Self::start_with(model, spec, tokenizer, name, config)
    }

    /// Starts the engine with `draft` as speculative decoding's draft model (same vocabulary as `model`).
    pub fn start_with_draft<B: Backend>(
        model: LlamaModel<B>,
        draft: LlamaModel<B>,
        tokenizer: Arc<ModelTokenizer>,
        name: String,
        config: &EngineConfig,
    ) -> Result<Self, StartError> {
        let (target, draft_vocab) = (model.config().vocab_size, draft.config().vocab_size);
        if target != draft_vocab {
            return Err(StartError::DraftVocabulary {
                target,
                draft: draft_vocab,
            });
        }
        let mut draft = DraftModel::new(
            draft,
            config.speculative.draft_kv_cache_mib,
            config.block_size,
        )
        .map_err(StartError::Draft)?;
        // The draft also feeds whole prompts and catch-up chunks beyond the step's token budget.
        draft
            .warm_up(config.token_budget.max(2048))
            .map_err(StartError::WarmUp)?;
        let spec = Speculator::from_config(&config.speculative, Some(draft))
            .map_err(StartError::Speculation)?;
        Self::start_with(model, spec, tokenizer, name, config)
    }

    /// Starts the engine thread for `model` with an explicit speculator (or none).
    pub fn start_with<B: Backend>(
        model: LlamaModel<B>,
        mut spec: Option<Speculator<B>>,
        tokenizer: Arc<ModelTokenizer>,
        name: String,
        config: &EngineConfig,
    ) -> Result<Self, StartError> {
        config.attention.validate().map_err(StartError::Attention)?;
        if let Some(p) = config
            .attention
            .hip()
            .filter(|_| model.backend().name() == "cuda")
        {
            p.check_cuda().map_err(StartError::Attention)?;
        }
        let attention = config.attention;
        let layout = model.kv_layout(1, config.block_size);
        let block_bytes = layout.bytes_f32().max(1);
        let num_blocks = (config.kv_cache_mib * 1024 * 1024 / block_bytes).max(1);
        let cache_config = KvCacheConfig {
            block_size: config.block_size,
            num_blocks,
        };
        let mut kv = model
            .backend_kv(&cache_config)
            .map_err(StartError::KvCache)?;
        if model.backend().tunes_per_shape() {
            let t = Instant::now();
            let done = warm_up(
                &model,
                &mut kv,
                cache_config,
                &warmup_rows(config.token_budget),
            )
            .map_err(StartError::WarmUp)?;
            tracing::info!(
                passes = done.len(),
                ms = t.elapsed().as_millis() as u64,
                "engine warm-up: one pass per row bucket, products tuned"
            );
        }
        let max_context = model.config().max_position_embeddings;
        let device = model.backend().name();
        let (tx, rx) = mpsc::channel();
        let stats = Arc::new(Mutex::new(EngineStats {
            kv_blocks_total: num_blocks,
            ..EngineStats::default()
        }));
        metrics::KV_BLOCKS_TOTAL.set(num_blocks as i64);
        let loop_stats = stats.clone();
        let scheduler = Scheduler::new(SchedulerConfig {
            token_budget: config.token_budget,
            max_sequences: config.max_sequences,
        });
        let eos = tokenizer.eos_token_ids();
        let config_token_budget = config.token_budget;
        let loop_tokenizer = tokenizer.clone();
        std::thread::Builder::new()
            .name("engram-engine".into())
            .spawn(move || {
                let mut state = LoopState {
                    cache: KvCache::new(cache_config),
                    scheduler,
                    active: HashMap::new(),
                    eos,
                    tokenizer: loop_tokenizer,
                    stats: loop_stats,
                    score_capacity: config_token_budget,
                    token_budget: config_token_budget,
                    attention,
                };
                state.run(&model, &mut kv, &rx, &mut spec);
            })
            .map_err(StartError::Thread)?;
        Ok(Self {
            name,
            device,
            tokenizer,
            max_context,
            kv_tokens: num_blocks * config.block_size,
            commands: Mutex::new(tx),
            next_id: AtomicU64::new(1),
            stats,
            max_waiting: config.max_waiting,
        })
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        if let Ok(tx) = self.commands.lock() {
            let _ = tx.send(Command::Shutdown);
        }
    }
}

impl Generator for Engine {
    fn model_name(&self) -> &str {
        &self.name
    }

    fn tokenizer(&self) -> &ModelTokenizer {
        &self.tokenizer
    }

    fn max_context(&self) -> usize {
        self.max_context
    }

    fn device(&self) -> &str {
        self.device
    }

    fn submit(
        &self,
        request: GenerationRequest,
    ) -> Result<UnboundedReceiver<GenerationEvent>, EngineError> {
        let prompt = request.prompt.len();
        if prompt == 0 {
            return Err(EngineError::EmptyPrompt);
        }
        request
            .params
            .validate(self.tokenizer.vocab_size(), self.max_context)?;
        if let Some(mode) = &request.attention {
            mode.validate()?;
            if let Some(p) = mode.hip().filter(|_| self.device == "cuda") {
                p.check_cuda()?;
            }
            if mode.hip().is_some() && request.kv_budget.is_some() {
                return Err(HipError(
                    "HiP attention cannot be combined with an H2O kv_budget: drop one of them"
                        .into(),
                )
                .into());
            }
        }
        let max_tokens = request.params.max_tokens;
        if let Some(c) = &request.constraint {
            let needed = c.min_tokens();
            if max_tokens < needed {
                return Err(EngineError::ConstraintBudget { max_tokens, needed });
            }
        }
        for (limit, what) in [
            (self.max_context, "the model's context window"),
            (self.kv_tokens, "the KV cache's capacity"),
        ] {
            if prompt + max_tokens > limit {
                return Err(EngineError::TooLong {
                    prompt,
                    max_tokens,
                    limit,
                    what,
                });
            }
        }
        let waiting = self.stats().waiting;
        if waiting >= self.max_waiting {
            return Err(EngineError::QueueFull(waiting));
        }
        let (events, rx) = unbounded_channel();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let cmd = Command::Submit {
            id,
            request,
            events,
            arrived: Instant::now(),
        };
        self.commands
            .lock()
            .map_err(|_| EngineError::Stopped("poisoned".into()))?
            .send(cmd)
            .map_err(|_| EngineError::Stopped("the engine thread exited".into()))?;
        Ok(rx)
    }

    fn stats(&self) -> EngineStats {
        self.stats.lock().map(|s| *s).unwrap_or_default()
    }

    fn score(&self, pairs: Vec<(Vec<u32>, Vec<u32>)>) -> Result<Scores, EngineError> {
        let (reply, answer) = mpsc::channel();
        self.call(Command::Score { pairs, reply }, answer)
    }

    fn score_segmented(&self, request: SegmentedScoring) -> Result<Scores, EngineError> {
        request.validate().map_err(EngineError::Scoring)?;
        let (reply, answer) = mpsc::channel();
        self.call(Command::ScoreSegmented { request, reply }, answer)
    }
}

impl Engine {
    /// Sends a scoring command and waits for its reply.
    fn call(
        &self,
        cmd: Command,
        answer: mpsc::Receiver<Result<Scores, EngineError>>,
    ) -> Result<Scores, EngineError> {
        self.commands
            .lock()
            .map_err(|_| EngineError::Stopped("poisoned".into()))?
            .send(cmd)
            .map_err(|_| EngineError::Stopped("the engine thread exited".into()))?;
        answer
            .recv()
            .map_err(|_| EngineError::Stopped("the engine thread exited".into()))?
    }
}

struct LoopState {
    cache: KvCache,
    /// Tokens per forward pass of a scoring call (at least its longest pair).
    score_capacity: usize,
    /// Tokens per step (speculative guesses use what the plan leaves).
    token_budget: usize,
    scheduler: Scheduler,
    active: HashMap<u64, Active>,
    eos: Vec<u32>,
    tokenizer: Arc<ModelTokenizer>,
    stats: Arc<Mutex<EngineStats>>,
    /// The default attention of requests that do not choose one.
    attention: AttentionMode,
}

impl LoopState {
    fn run<B: Backend>(
        &mut self,
        model: &LlamaModel<B>,
        kv: &mut B::Kv,
        rx: &mpsc::Receiver<Command>,
        spec: &mut Option<Speculator<B>>,
    ) {
        loop {
            // Block for work when idle; otherwise take whatever has arrived.
            if self.scheduler.is_idle() {
                match rx.recv() {
                    Ok(cmd) => {
                        if !self.handle(cmd, model, kv, spec) {
                            return;
                        }
                    }
                    Err(_) => return,
                }
            }
            while let Ok(cmd) = rx.try_recv() {
                if !self.handle(cmd, model, kv, spec) {
                    return;
                }
            }
            self.drop_cancelled(spec);
            if let Err(e) = self.step(model, kv, spec) {
                tracing::error!(error = %e, "engine step failed");
                for (id, a) in self.active.drain() {
                    let _ = a.events.send(GenerationEvent::Failed(e.clone()));
                    self.scheduler.cancel(id);
                    self.cache.release(id);
                    if let Some(s) = spec.as_mut() {
                        s.release(id);
                    }
                }
            }
            self.publish_stats();
        }
    }

    /// Takes a command, scoring calls at once (between steps, over the shared cache); false on shutdown.
    fn handle<B: Backend>(
        &mut self,
        cmd: Command,
        model: &LlamaModel<B>,
        kv: &mut B::Kv,
        spec: &Option<Speculator<B>>,
    ) -> bool {
        match cmd {
            Command::Score { pairs, reply } => {
                let result = score_continuations(
                    model,
                    kv,
                    &mut self.cache,
                    &pairs,
                    self.score_capacity,
                    SCORE_SEQ_BASE,
                )
                .map_err(|e| EngineError::Scoring(e.to_string()));
                let _ = reply.send(result);
                true
            }
            Command::ScoreSegmented { request, reply } => {
                let result = score_segmented(
                    model,
                    kv,
                    &mut self.cache,
                    &request,
                    self.score_capacity,
                    SCORE_SEQ_BASE,
                )
                .map_err(|e| EngineError::Scoring(e.to_string()));
                let _ = reply.send(result);
                true
            }
            other => self.accept(other, spec.as_ref().map(Speculator::initial_k)),
        }
    }

    /// Takes a generation request or a shutdown; false on shutdown. `k`: the proposal length of a new sequence
    /// under speculative decoding.
    fn accept(&mut self, cmd: Command, k: Option<AdaptiveK>) -> bool {
        match cmd {
            Command::Shutdown => false,
            Command::Score { .. } | Command::ScoreSegmented { .. } => {
                unreachable!("scoring calls are handled with the model at hand")
            }
            Command::Submit {
                id,
                request,
                events,
                arrived,
            } => {
                let seed = request.params.seed.unwrap_or(id);
                let stops = StopMatcher::new(request.params.stop_strings.clone());
                let json = request.constraint.as_ref().map(|c| c.start());
                let h2o = request
                    .kv_budget
                    .map(|b| H2oState::new(b.resolve(request.prompt.len()), H2O_SLACK));
                // The engine's default applies to requests that do not choose; never together with H2O.
                let hip = match request.attention {
                    Some(mode) => mode.hip(),
                    None => self.attention.hip().filter(|_| h2o.is_none()),
                };
                self.scheduler.add(SeqState {
                    id,
                    prompt_len: request.prompt.len(),
                    prefilled: 0,
                    generated: 0,
                    max_new_tokens: request.params.max_tokens,
                });
                self.active.insert(
                    id,
                    Active {
                        request,
                        events,
                        generated: Vec::new(),
                        sampler: Sampler::new(seed),
                        stops,
                        decoded: String::new(),
                        arrived,
                        last_token: None,
                        // Constrained output is not speculated: its masks follow one token at a time; nor is
                        // a sequence under H2O, whose cache is compacted between steps, nor one under HiP,
                        // whose verification rows would share one sparse mask where plain decoding has one per
                        // row.
                        k: k.filter(|_| json.is_none() && h2o.is_none() && hip.is_none()),
                        json,
                        draft_sampler: Sampler::new(seed ^ 0xD4AF_7000),
                        target_steps: 0,
                        proposed: 0,
                        accepted: 0,
                        h2o,
                        hip,
                    },
                );
                true
            }
        }
    }

    fn drop_cancelled<B: Backend>(&mut self, spec: &mut Option<Speculator<B>>) {
        let gone: Vec<u64> = self
            .active
            .iter()
            .filter(|(_, a)| a.events.is_closed())
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            self.scheduler.cancel(id);
            self.cache.release(id);
            self.active.remove(&id);
            if let Some(s) = spec.as_mut() {
                s.release(id);
            }
        }
    }

    fn publish_stats(&self) {
        let usage = self.cache.usage();
        let s = EngineStats {
            waiting: self.scheduler.queue_depth(),
            running: self.scheduler.running(),
            kv_blocks_used: usage.used_blocks,
            kv_blocks_total: usage.total_blocks,
        };
        metrics::QUEUE_DEPTH.set(s.waiting as i64);
        metrics::KV_BLOCKS_USED.set(s.kv_blocks_used as i64);
        if let Ok(mut g) = self.stats.lock() {
            *g = s;
        }
    }

    /// Plans and runs one step, then samples and streams the new tokens.
    fn step<B: Backend>(
        &mut self,
        model: &LlamaModel<B>,
        kv: &mut B::Kv,
        spec: &mut Option<Speculator<B>>,
    ) -> Result<(), String> {
        let began = Instant::now();
        // Blocks the decoding sequences grow into this step are kept from new admissions.
        let growth = self.make_room(spec) * self.cache.block_size();
        let (cache, active) = (&mut self.cache, &self.active);
        let plan = self.scheduler.plan(&mut |id, len| {
            active.get(&id).is_some_and(|a| {
                // A sequence under H2O owns its blocks: they are compacted in place, so never shared.
                cache.can_admit(len + growth)
                    && if a.h2o.is_some() {
                        cache.reserve(id, len).is_ok()
                    } else {
                        cache.admit(id, &a.context(0, len)).is_ok()
                    }
            })
        });
        if plan.items.is_empty() {
            return Ok(());
        }
        let decode_only = plan.items.iter().all(|i| i.kind == ChunkKind::Decode);
        let any_decode = plan.items.iter().any(|i| i.kind == ChunkKind::Decode);
        let mut proposals = match spec.as_mut() {
            Some(s) if any_decode => {
                if s.choose() {
                    self.propose(s, &plan)?
                } else {
                    HashMap::new()
                }
            }
            _ => HashMap::new(),
        };
        let mut batch = StepBatch::default();
        let mut sampling: Vec<Sampling> = Vec::new();
        for item in &plan.items {
            let a = &self.active[&item.seq];
            match item.kind {
                ChunkKind::Prefill { start, len, last } => {
                    let tokens = a.context(start, len);
                    push_chunk(&mut batch, &self.cache, item.seq, &tokens, start, last)
                        .map_err(|e| e.to_string())?;
                    set_attention(&mut batch, a.hip);
                    if a.h2o.is_some() {
                        batch.tracked.push(batch.seqs.len() - 1);
                    }
                    if last {
                        sampling.push(Sampling {
                            seq: item.seq,
                            proposal: None,
                        });
                    }
                }
                ChunkKind::Decode => {
                    let proposal = proposals.remove(&item.seq);
                    sampling.push(self.push_decode(&mut batch, item.seq, proposal)?);
                }
            }
        }
        let speculated = sampling.iter().any(|s| s.proposal.is_some());
        // Greedy requests without logprobs or penalties take the argmax on the backend, so only token ids leave
        // the device; any other request in the step needs the full logits on the host.
        let on_device = !sampling.is_empty()
            && sampling.iter().all(|s| {
                self.active.get(&s.seq).is_some_and(|a| {
                    a.request.params.greedy_on_device() && a.request.constraint.is_none()
                })
            });
        let (finished, emitted_total) = if on_device {
            let tokens = model
                .forward_select(kv, &batch, self.cache.block_size(), 0.0, 0)
                .map_err(|e| e.to_string())?;
            self.emit_chosen(&tokens, sampling, spec)?
        } else {
            let logits = model
                .forward(kv, &batch, self.cache.block_size())
                .map_err(|e| e.to_string())?;
            self.emit_from_logits(logits, sampling, spec)?
        };
        if let Some(s) = spec.as_mut() {
            if decode_only {
                s.observe(speculated, emitted_total, began.elapsed().as_secs_f64());
            }
        }
        let ids: Vec<u64> = finished.iter().map(|f| f.0).collect();
        self.scheduler.complete(&plan, &ids);
        self.finish(finished, spec);
        self.evict(model, kv)
    }

    /// Makes room for every decoding sequence's next token: while they need more new blocks than are free, the
    /// most recently admitted running sequence is preempted (its KV released; the scheduler recomputes it later
    /// from its prompt and what it generated, so its output is unchanged). A sequence that cannot grow even alone
    /// fails by itself, never the step. Returns the new blocks the decoding sequences take this step.
    fn make_room<B: Backend>(&mut self, spec: &mut Option<Speculator<B>>) -> usize {
        loop {
            let bs = self.cache.block_size();
            let needed = self
                .scheduler
                .running_seqs()
                .iter()
                .filter(|s| s.prefilled >= s.prompt_len)
                .filter_map(|s| self.cache.table(s.id))
                .filter(|t| t.len >= t.blocks.len() * bs)
                .count();
            let usage = self.cache.usage();
            if needed <= usage.total_blocks - usage.used_blocks {
                return needed;
            }
            let Some(victim) = self.scheduler.running_seqs().last().map(|s| s.id) else {
                return needed;
            };
            self.cache.release(victim);
            if let Some(s) = spec.as_mut() {
                s.release(victim);
            }
            if self.scheduler.running() == 1 {
                // Alone and still no room: the cache is smaller than this sequence.
                self.scheduler.cancel(victim);
                if let Some(a) = self.active.remove(&victim) {
                    let _ = a.events.send(GenerationEvent::Failed(format!(
                        "the KV cache cannot hold this sequence's {} tokens",
                        a.request.prompt.len() + a.generated.len()
                    )));
                }
                continue;
            }
            self.scheduler.preempt(victim);
            metrics::PREEMPTIONS.inc();
            if let Some(a) = self.active.get_mut(&victim) {
                let len = a.request.prompt.len() + a.generated.len();
                a.h2o = a
                    .request
                    .kv_budget
                    .map(|b| H2oState::new(b.resolve(len), H2O_SLACK));
            }
            tracing::debug!(seq = victim, "KV cache full: sequence preempted");
        }
    }

    /// Adds a decoding sequence's chunk to `batch`: its last token, plus `proposal`'s guesses when the cache has
    /// room for them, with logits for every row.
    fn push_decode(
        &mut self,
        batch: &mut StepBatch,
        seq: u64,
        mut proposal: Option<Proposal>,
    ) -> Result<Sampling, String> {
        let a = &self.active[&seq];
        let token = *a.generated.last().ok_or("decode before the first token")?;
        let start = self
            .cache
            .table(seq)
            .ok_or("decode of an unknown sequence")?
            .len;
        // Guesses ride along when the cache has room for them.
        let guesses = proposal.as_ref().map_or(0, |p| p.tokens.len());
        let fits = guesses > 0 && self.cache.append_slots(seq, 1 + guesses).is_ok();
        if !fits {
            proposal = None;
            self.cache.append_slots(seq, 1).map_err(|e| e.to_string())?;
        }
        let mut tokens = vec![token];
        if let Some(p) = &proposal {
            tokens.extend_from_slice(&p.tokens);
        }
        // Under H2O the cache index and the rotary position part once tokens are evicted.
        let position = a.h2o.as_ref().map_or(start, |h| h.position(start));
        push_chunk_at(batch, &self.cache, seq, &tokens, start, position, false)
            .map_err(|e| e.to_string())?;
        set_attention(batch, a.hip);
        if a.h2o.is_some() {
            batch.tracked.push(batch.seqs.len() - 1);
        }
        let end = batch.tokens.len() as u32;
        batch.logits_rows.extend(end - tokens.len() as u32..end);
        Ok(Sampling {
            seq,
            proposal: proposal.map(|p| (p, start)),
        })
    }

    /// Ends the finished requests: their `Done` events with usage, their cache blocks and speculative state freed.
    fn finish<B: Backend>(
        &mut self,
        finished: Vec<(u64, FinishReason)>,
        spec: &mut Option<Speculator<B>>,
    ) {
        for (id, reason) in finished {
            if let Some(a) = self.active.remove(&id) {
                let usage = Usage {
                    prompt_tokens: a.request.prompt.len(),
                    completion_tokens: a.generated.len(),
                    target_steps: a.target_steps,
                    proposed_tokens: a.proposed,
                    accepted_tokens: a.accepted,
                };
                let _ = a.events.send(GenerationEvent::Done { reason, usage });
            }
            self.cache.release(id);
            if let Some(s) = spec.as_mut() {
                s.release(id);
            }
        }
    }

    /// H2O: evicts the decoding sequences that reached their budget plus the slack.
    fn evict<B: Backend>(&mut self, model: &LlamaModel<B>, kv: &mut B::Kv) -> Result<(), String> {
        let mut due: Vec<(u64, &mut H2oState)> = self
            .active
            .iter_mut()
            .filter(|(_, a)| !a.generated.is_empty())
            .filter_map(|(&id, a)| a.h2o.as_mut().map(|h| (id, h)))
            .collect();
        if due.is_empty() {
            return Ok(());
        }
        let evicted = evict_due(
            model,
            kv,
            &mut self.cache,
            &mut due,
            &mut EvictionTimes::default(),
        )
        .map_err(|e| e.to_string())?;
        metrics::KV_EVICTED_TOKENS.inc_by(evicted as u64);
        Ok(())
    }
}
