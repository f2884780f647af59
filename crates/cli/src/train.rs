//! `lowrank train`: a fine-tune described by a run file. The run itself is
//! [`lowrank_train::run`]; this command resolves its settings and run folder, draws the progress
//! bar, plots the loss and shows outputs before and after.
use crate::common::device;
use crate::progress::Bar;
use anyhow::Result;
use lowrank_models::{AnyModel, TextTokenizer};
use lowrank_train::config::expand_path;
use lowrank_train::data::{read_pairs, Templater};
use lowrank_train::run::{finished_summary, prepare, read_spec, run_dir_of, Start};
use lowrank_train::RunConfig;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct TrainArgs {
    /// Run file (TOML). With --resume it defaults to the run folder's config.toml.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Override a setting: section.key=value (repeatable).
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    set: Vec<String>,
    /// Run folder (default: runs/<date-time>).
    #[arg(long)]
    output: Option<PathBuf>,
    /// Continue a run from its newest checkpoint (a run folder or a checkpoint folder).
    #[arg(long, conflicts_with = "overwrite")]
    resume: Option<PathBuf>,
    /// Replace the run already in the output folder (otherwise a non-empty folder is refused).
    #[arg(long)]
    overwrite: bool,
    /// The model to fine-tune (Hugging Face folder or .gguf file): shorthand for `--set model.path=...`.
    #[arg(long)]
    model: Option<PathBuf>,
}

/// First `n` distinct prompts of the test file, with all their references.
fn test_prompts(cfg: &RunConfig, n: usize) -> Result<Vec<(String, Vec<String>)>> {
    let Some(test) = &cfg.data.test else { return Ok(vec![]) };
    let path = expand_path(test);
    let pairs = read_pairs(&path, &read_spec(cfg, &cfg.data.test_target))?;
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for p in pairs {
        match out.iter().position(|(q, _)| *q == p.prompt) {
            Some(i) => out[i].1.push(p.completion),
            None if out.len() < n => out.push((p.prompt, vec![p.completion])),
            None => {}
        }
    }
    Ok(out)
}

fn sample_outputs(model: &AnyModel, config: &lowrank_models::ModelConfig, tok: &TextTokenizer, tpl: &Templater, cfg: &RunConfig, prompts: &[(String, Vec<String>)]) -> Result<Vec<String>> {
    let ids: Vec<Vec<u32>> = prompts
        .iter()
        .map(|(p, _)| {
            let text = tpl.prompt_text(p);
            let text = if cfg.report.chat_template { tok.chat_prompt(&text) } else { text };
            crate::common::prompt_ids(model, tok, &text)
        })
        .collect::<Result<_>>()?;
    let r = &cfg.report;
    let longest = ids.iter().map(Vec::len).max().unwrap_or(0);
    let max_new_tokens = crate::common::fit_new_tokens(config, longest, r.max_new_tokens);
    let d = crate::common::Decoding { num_beams: r.num_beams, max_new_tokens, length_penalty: r.length_penalty, no_repeat_ngram_size: r.no_repeat_ngram_size, early_stopping: true };
    let outs = crate::common::decode(model, tok, &ids, &d)?;
    Ok(outs.iter().map(|o| tok.decode(o).map(|s| s.trim().to_string())).collect::<std::result::Result<_, _>>()?)
}

/// `s` as a TOML basic string.
fn toml_string(s: &str) -> String {
    let escaped: String = s.chars().flat_map(|c| match c { '"' => vec!['\\', '"'], '\\' => vec!['\\', '\\'], c => vec![c] }).collect();
    format!("\"{escaped}\"")
}

fn default_run_dir() -> PathBuf {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    PathBuf::from("runs").join(format!("run-{secs}"))
}

pub fn run(args: TrainArgs) -> Result<()> {
    let run_dir_from_resume = args.resume.as_deref().map(run_dir_of);
    let config_path = match (&args.config, &run_dir_from_resume) {
        (Some(c), _) => c.clone(),
        (None, Some(dir)) => {
            let p = dir.join("config.toml");
            if !p.exists() {
                anyhow::bail!("{}: no config.toml, so not a run folder to resume (give --config too)", dir.display());
            }
            p
        }
        (None, None) => anyhow::bail!("--config is required (or --resume a run folder)"),
    };
    let mut overrides = args.set.clone();
    if let Some(m) = &args.model {
        // A TOML string, so any path survives the override parser.
        overrides.push(format!("model.path={}", toml_string(&m.display().to_string())));
    }
    let cfg = RunConfig::from_file(&config_path, &overrides)?;
    let run_dir = args
        .output
        .clone()
        .or_else(|| run_dir_from_resume.clone())
        .or_else(|| cfg.output.as_deref().map(expand_path))
        .unwrap_or_else(default_run_dir);
    let start = match (&args.resume, args.overwrite) {
        (Some(dir), _) => Start::Resume(dir.clone()),
        (None, true) => Start::Overwrite,
        (None, false) => Start::Fresh,
    };
    if let Start::Resume(_) = &start {
        if let Some(done) = finished_summary(&cfg, &run_dir)? {
            eprintln!(
                "nothing to do: {} already finished all {} steps (final loss {:.4}); its adapter is {}",
                run_dir.display(),
                done.steps,
                done.final_loss,
                run_dir.join("adapter").display()
            );
            let svg = run_dir.join("loss.svg");
            if !svg.exists() {
                crate::plot::loss_curve_svg(&run_dir.join("metrics.jsonl"), &svg)?;
            }
            return Ok(());
        }
    }
    let samples = test_prompts(&cfg, cfg.report.samples)?;
    let mut bar = Bar::new();
    let p = prepare(cfg, run_dir, start, &device(), &mut bar)?;
    let base_outputs = if samples.is_empty() { vec![] } else {
        eprintln!("generating base-model outputs for {} test prompts ...", samples.len());
        sample_outputs(&p.model, &p.loaded.config, &p.loaded.tokenizer, &p.templater, &p.cfg, &samples)?
    };
    let summary = p.train(&mut bar)?;
    crate::plot::loss_curve_svg(&p.run_dir.join("metrics.jsonl"), &p.run_dir.join("loss.svg"))?;
    let warned = match summary.warnings.len() {
        0 => String::new(),
        1 => " (1 warning, above)".to_string(),
        n => format!(" ({n} warnings, above)"),
    };
    eprintln!(
        "done{warned}: {} steps in {:.1} s ({:.0} tokens/s), final loss {:.4}{}; adapter saved to {}",
        summary.steps,
        summary.seconds,
        summary.tokens_per_s,
        summary.final_loss,
        summary.val_loss.map(|v| format!(", validation loss {v:.4}")).unwrap_or_default(),
        p.adapter_dir().display()
    );

    if !samples.is_empty() {
        let tuned = sample_outputs(&p.model, &p.loaded.config, &p.loaded.tokenizer, &p.templater, &p.cfg, &samples)?;
        let mut lines = Vec::new();
        println!();
        for (i, ((prompt, refs), (base, tuned))) in samples.iter().zip(base_outputs.iter().zip(&tuned)).enumerate() {
            println!("[{}] {prompt}", i + 1);
            println!("    base : {base}");
            println!("    tuned: {tuned}");
            println!("    ref  : {}", refs.first().map(String::as_str).unwrap_or(""));
            lines.push(serde_json::json!({"prompt": prompt, "base": base, "tuned": tuned, "references": refs}).to_string());
        }
        lowrank_models::weights::write_atomic(&p.run_dir.join("samples.jsonl"), (lines.join("\n") + "\n").as_bytes())?;
    }
    Ok(())
}
