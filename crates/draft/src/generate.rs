//! Stage 2's data: completions of prompts by the target itself, through the engine (every prompt submitted at
//! once, so the engine batches them), greedy or sampled.

use engram_engine::{GenerationEvent, GenerationRequest, Generator, SamplingParams};

use crate::data::Example;
use crate::DraftError;

/// The target's completion of each prompt under `params`, in order; a failed request fails the whole call.
pub fn complete<G: Generator + ?Sized>(
    engine: &G,
    prompts: &[Vec<u32>],
    params: &SamplingParams,
) -> Result<Vec<Vec<u32>>, DraftError> {
    let failed =
        |e: String| DraftError::Invalid(format!("the target could not complete a prompt: {e}"));
    let receivers = prompts
        .iter()
        .map(|p| {
            engine
                .submit(GenerationRequest::new(p.clone(), params.clone()))
                .map_err(|e| failed(e.to_string()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut out = Vec::with_capacity(prompts.len());
    for mut rx in receivers {
        let mut tokens = Vec::new();
        loop {
            match rx.blocking_recv() {
                Some(GenerationEvent::Token(t)) => tokens.push(t.token),
                Some(GenerationEvent::Done { .. }) => break,
                Some(GenerationEvent::Failed(e)) => return Err(failed(e)),
                None => return Err(failed("the engine stopped".into())),
            }
        }
        out.push(tokens);
    }
    Ok(out)
}

/// Each prompt with the target's completions under each of `params` (one example per prompt and setting),
/// prompt tokens weighted `prompt_weight`; empty completions are dropped.
pub fn distillation_examples<G: Generator + ?Sized>(
    engine: &G,
    prompts: &[Vec<u32>],
    params: &[SamplingParams],
    prompt_weight: f32,
) -> Result<Vec<Example>, DraftError> {
    let mut out = Vec::new();
    for p in params {
        for (prompt, completion) in prompts.iter().zip(complete(engine, prompts, p)?) {
            if !completion.is_empty() {
                out.push(Example::completion(prompt, &completion, prompt_weight));
            }
        }
    }
    Ok(out)
}
