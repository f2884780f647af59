//! `lowrank generate`: text from a prompt; only the generated text goes to stdout.
use crate::common::{compute_dtype, open_for_inference};
use anyhow::Result;
use lowrank_models::generate::{generate, SamplingParams};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct GenerateArgs {
    /// Hugging Face folder or .gguf file.
    #[arg(long)]
    model: PathBuf,
    /// PEFT adapter folder to apply.
    #[arg(long)]
    adapter: Option<PathBuf>,
    #[arg(long)]
    prompt: String,
    #[arg(long, default_value_t = 64)]
    max_new_tokens: usize,
    /// Sampling temperature (greedy when absent or 0).
    #[arg(long)]
    temperature: Option<f64>,
    #[arg(long)]
    top_p: Option<f64>,
    #[arg(long)]
    top_k: Option<usize>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Wrap the prompt in the model's chat template.
    #[arg(long)]
    chat: bool,
    /// Keep the adapter as a separate branch instead of merging it into the weights.
    #[arg(long)]
    no_merge: bool,
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// Decode with block-quantized weights and 8-bit activations (faster, approximate): none,
    /// q8_0, q4_0, q4_1 (a GGUF weight already in that format is kept as it is). `none` reads the
    /// weights as loaded (a GGUF's 4-bit blocks too) with f32 activations.
    #[arg(long, default_value = "none")]
    quantize: String,
    /// `fast`: lowrank's CPU decoder (Llama family on the CPU in f32; elsewhere candle);
    /// `candle`: the training model's own forward.
    #[arg(long, value_enum, default_value = "fast")]
    engine: crate::common::Engine,
}

pub fn run(a: GenerateArgs) -> Result<()> {
    if let Some(t) = a.temperature {
        anyhow::ensure!(t >= 0.0 && t.is_finite(), "--temperature must be a finite number >= 0 (0: greedy), got {t}");
    }
    if let Some(p) = a.top_p {
        anyhow::ensure!(p > 0.0 && p <= 1.0, "--top-p must be in (0, 1], got {p}");
    }
    anyhow::ensure!(a.top_k != Some(0), "--top-k must be at least 1");
    anyhow::ensure!(a.max_new_tokens >= 1, "--max-new-tokens must be at least 1");
    let ready = open_for_inference(&a.model, a.adapter.as_deref(), !a.no_merge, compute_dtype(&a.dtype)?, &a.quantize, a.engine)?;
    let tok = &ready.loaded.tokenizer;
    let text = if a.chat { tok.chat_prompt(&a.prompt) } else { a.prompt.clone() };
    let ids = crate::common::prompt_ids(&ready.model, tok, &text)?;
    anyhow::ensure!(!ids.is_empty(), "the prompt is empty after tokenisation");
    let params = SamplingParams {
        max_new_tokens: crate::common::fit_new_tokens(&ready.loaded.config, ids.len(), a.max_new_tokens),
        temperature: a.temperature,
        top_k: a.top_k,
        top_p: a.top_p,
        seed: a.seed,
        stop_ids: tok.eos_ids.clone(),
        ignore_stop: false,
    };
    let out = generate(&ready.model, &[ids], &params, tok.pad_id)?;
    let text = tok.decode(out.first().map(Vec::as_slice).unwrap_or(&[]))?;
    println!("{text}");
    Ok(())
}
