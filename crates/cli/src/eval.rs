//! `lowrank eval`: generate one output per unique prompt of a data set (greedy or beam search),
//! write hypotheses and references, and score them with the E2E metrics.
use crate::common::{compute_dtype, open_for_inference};
use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use lowrank_models::weights::write_atomic;
use lowrank_train::data::{read_pairs, DataFormat, ReadSpec};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct EvalArgs {
    #[arg(long)]
    model: PathBuf,
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// CSV (or JSONL) with prompts and references, several references per prompt allowed; or the
    /// source side of parallel text files (with --data-target).
    #[arg(long)]
    data: PathBuf,
    /// Parallel text: the reference side, line-aligned with --data (may be .gz).
    #[arg(long)]
    data_target: Option<PathBuf>,
    #[arg(long, default_value = "mr")]
    prompt_column: String,
    #[arg(long, default_value = "ref")]
    ref_column: String,
    /// Prompt template; `{prompt}` is replaced by the prompt column.
    #[arg(long, default_value = "{prompt}")]
    template: String,
    /// Wrap the templated prompt in the model's chat template.
    #[arg(long)]
    chat: bool,
    /// Beam width (1: greedy).
    #[arg(long, default_value_t = 1)]
    beam: usize,
    #[arg(long, default_value_t = 1.0)]
    length_penalty: f64,
    #[arg(long, default_value_t = 0)]
    no_repeat_ngram_size: usize,
    #[arg(long)]
    early_stopping: bool,
    #[arg(long, default_value_t = 64)]
    max_new_tokens: usize,
    /// Prompts decoded together.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Only the first N unique prompts (0: all).
    #[arg(long, default_value_t = 0)]
    limit: usize,
    #[arg(long)]
    output: PathBuf,
    #[command(flatten)]
    metrics: crate::score::MetricArgs,
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

pub fn run(a: EvalArgs) -> Result<()> {
    anyhow::ensure!(a.beam >= 1, "--beam must be at least 1");
    anyhow::ensure!(a.batch >= 1, "--batch must be at least 1");
    anyhow::ensure!(a.max_new_tokens >= 1, "--max-new-tokens must be at least 1");
    anyhow::ensure!(a.length_penalty.is_finite(), "--length-penalty must be a finite number, got {}", a.length_penalty);
    lowrank_train::data::check_template(&a.template, "prompt", "--template").map_err(anyhow::Error::msg)?;
    let format = if a.data_target.is_some() { DataFormat::Parallel } else { DataFormat::Auto };
    let spec = ReadSpec { format, prompt_column: a.prompt_column.clone(), completion_column: a.ref_column.clone(), target_file: a.data_target.clone() };
    let pairs = read_pairs(&a.data, &spec)?;
    let mut groups: Vec<(String, Vec<String>)> = Vec::new();
    let mut index: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for p in pairs {
        match index.get(&p.prompt) {
            Some(&i) => groups[i].1.push(p.completion),
            None => {
                index.insert(p.prompt.clone(), groups.len());
                groups.push((p.prompt, vec![p.completion]));
            }
        }
    }
    if a.limit > 0 {
        groups.truncate(a.limit);
    }
    // References one line each; empty ones dropped (an empty line would end the group in
    // references.txt).
    let refs: Vec<Vec<String>> = groups.iter().map(|(_, r)| r.iter().map(|x| lowrank_metrics::text::one_line(x).trim().to_string()).filter(|x| !x.is_empty()).collect()).collect();
    if let Some((prompt, _)) = groups.iter().zip(&refs).find(|(_, r)| r.is_empty()).map(|(g, _)| g) {
        anyhow::bail!("{}: prompt {prompt:?} has no non-empty reference in column `{}`", a.data.display(), a.ref_column);
    }
    let ready = open_for_inference(&a.model, a.adapter.as_deref(), true, compute_dtype(&a.dtype)?, &a.quantize, a.engine)?;
    let tok = &ready.loaded.tokenizer;
    let bar = ProgressBar::new(groups.len() as u64);
    bar.set_style(ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} prompts ETA {eta}").unwrap_or_else(|_| ProgressStyle::default_bar()));
    let mut hyps = Vec::with_capacity(groups.len());
    for chunk in groups.chunks(a.batch.max(1)) {
        let ids: Vec<Vec<u32>> = chunk
            .iter()
            .map(|(p, _)| {
                let text = a.template.replace("{prompt}", p);
                crate::common::prompt_ids(&ready.model, tok, &if a.chat { tok.chat_prompt(&text) } else { text })
            })
            .collect::<Result<_>>()?;
        let longest = ids.iter().map(Vec::len).max().unwrap_or(0);
        let max_new_tokens = crate::common::fit_new_tokens(&ready.loaded.config, longest, a.max_new_tokens);
        let d = crate::common::Decoding { num_beams: a.beam, max_new_tokens, length_penalty: a.length_penalty, no_repeat_ngram_size: a.no_repeat_ngram_size, early_stopping: a.early_stopping };
        let outs = crate::common::decode(&ready.model, tok, &ids, &d)?;
        for o in outs {
            // One line each, whatever the model generated (control characters included), so that
            // hypotheses.txt lines up with the references and can be scored again.
            hyps.push(lowrank_metrics::text::one_line(tok.decode(&o)?.trim()).trim().to_string());
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    std::fs::create_dir_all(&a.output).with_context(|| format!("cannot write {}", a.output.display()))?;
    write_atomic(&a.output.join("hypotheses.txt"), (hyps.join("\n") + "\n").as_bytes())?;
    let refs_text: Vec<String> = refs.iter().map(|g| g.join("\n")).collect();
    write_atomic(&a.output.join("references.txt"), (refs_text.join("\n\n") + "\n").as_bytes())?;
    let (json, text) = crate::score::compute(&hyps, &refs, &a.metrics)?;
    write_atomic(&a.output.join("scores.json"), serde_json::to_string_pretty(&json)?.as_bytes())?;
    eprintln!("{} prompts; outputs in {}", hyps.len(), a.output.display());
    print!("{text}");
    Ok(())
}
