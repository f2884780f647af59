//! `lowrank`: LoRA fine-tuning of pretrained transformers. The binary is thin: it parses
//! arguments, calls the library crates, and prints one `lowrank: error: ...` line on failure
//! (exit code 1; 2 for bad arguments).
mod bench;
mod common;
mod eval;
mod generate;
mod inspect;
mod merge;
mod plot;
mod progress;
mod score;
mod train;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "lowrank", version, about = "Parameter-efficient fine-tuning (LoRA) of pretrained transformers")]
struct Cli {
    /// Compute threads (default: all cores, or RAYON_NUM_THREADS).
    #[arg(long, global = true)]
    threads: Option<usize>,
    /// Where to compute: cpu, or cuda / cuda:N in a build with `--features cuda`.
    #[arg(long, global = true, default_value = "cpu")]
    device: String,
    /// On the GPU, compute f32 matrix products with TF32 tensor cores (inputs rounded to 10
    /// mantissa bits, f32 accumulation), as PyTorch's `allow_tf32`; f32 elsewhere.
    #[arg(long, global = true)]
    tf32: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Fine-tune a model with LoRA as described by a run file.
    Train(train::TrainArgs),
    /// Generate text from a prompt (greedy unless --temperature is given).
    Generate(generate::GenerateArgs),
    /// Merge an adapter into its base model and save a Hugging Face folder.
    Merge(merge::MergeArgs),
    /// Show modules, shapes, dtypes and parameter counts of a model or adapter.
    Inspect(inspect::InspectArgs),
    /// E2E NLG metrics (BLEU, NIST, METEOR, ROUGE-L, CIDEr) of hypotheses against references.
    Score(score::ScoreArgs),
    /// Generate for every unique prompt of a data set and score the outputs.
    Eval(eval::EvalArgs),
    /// Benchmarks.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

fn main() {
    common::tune_allocator();
    lowrank_models::thread_pools::tune_candle_pool();
    let cli = Cli::parse();
    let requested = match cli.threads {
        Some(n) => Some((n, "--threads")),
        None => std::env::var("RAYON_NUM_THREADS").ok().and_then(|v| v.trim().parse().ok()).map(|n| (n, "RAYON_NUM_THREADS")),
    };
    if let Some((n, what)) = requested {
        let (n, warning) = lowrank_models::thread_pools::capped_threads(n, what);
        if let Some(w) = warning {
            eprintln!("lowrank: warning: {w}");
        }
        rayon_init(n);
    }
    let result = common::select_device(&cli.device, cli.tf32).and_then(|()| match cli.command {
        Command::Train(a) => train::run(a),
        Command::Generate(a) => generate::run(a),
        Command::Merge(a) => merge::run(a),
        Command::Inspect(a) => inspect::run(a),
        Command::Score(a) => score::run(a),
        Command::Eval(a) => eval::run(a),
        Command::Bench(b) => bench::run(b),
    });
    if let Err(e) = result {
        let mut msg = without_backtrace(&format!("{e}"));
        for cause in e.chain().skip(1) {
            let c = without_backtrace(&cause.to_string());
            if !msg.contains(&c) {
                msg.push_str(&format!(": {c}"));
            }
        }
        let one_line: Vec<&str> = msg.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
        eprintln!("lowrank: error: {}", one_line.join(" "));
        std::process::exit(1);
    }
}

/// Sets the compute threads (rayon's pool and candle's read this before they start).
fn rayon_init(n: usize) {
    std::env::set_var("RAYON_NUM_THREADS", n.to_string());
}

/// The error message without a backtrace: with `RUST_BACKTRACE` set, candle's errors carry one
/// in their text, and the user gets one line.
fn without_backtrace(msg: &str) -> String {
    let mut kept = Vec::new();
    for line in msg.lines() {
        let t = line.trim();
        let frame = t.split_once(':').is_some_and(|(n, _)| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()));
        if frame || t.starts_with("stack backtrace") || t.starts_with("Stack backtrace") || t == "disabled backtrace" {
            break;
        }
        kept.push(line);
    }
    kept.join("\n")
}
