//! `lowrank score`: the E2E NLG metrics of a hypothesis file against references.
use anyhow::{Context, Result};
use lowrank_metrics::{format_table, read_hypotheses, read_references, score_all, BleuNistMode, MeteorSource, ScoreOptions, Scores};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct ScoreArgs {
    /// One hypothesis per line.
    #[arg(long)]
    hyp: PathBuf,
    /// References: e2e-metrics text format (groups separated by blank lines) or the E2E CSV (mr,ref).
    #[arg(long)]
    refs: PathBuf,
    #[arg(long, default_value = "table", value_parser = ["table", "json"])]
    format: String,
    #[command(flatten)]
    metrics: MetricArgs,
}

/// How the metrics are computed (shared by `score` and `eval`).
#[derive(clap::Args)]
pub struct MetricArgs {
    /// BLEU/NIST as the repository's Python port computes them (`measure_scores.py -p`, the LoRA paper's figures).
    #[arg(long)]
    python_port: bool,
    /// METEOR data folder (else $LOWRANK_METEOR_DATA or ~/.cache/lowrank/meteor).
    #[arg(long)]
    meteor_data: Option<PathBuf>,
    /// Skip METEOR.
    #[arg(long)]
    no_meteor: bool,
}

impl MetricArgs {
    pub fn options(&self) -> ScoreOptions {
        ScoreOptions {
            bleu_nist_mode: if self.python_port { BleuNistMode::PythonPort } else { BleuNistMode::default() },
            meteor: match (self.no_meteor, &self.meteor_data) {
                (true, _) => MeteorSource::Disabled,
                (false, Some(d)) => MeteorSource::Dir(d.clone()),
                (false, None) => MeteorSource::Auto,
            },
        }
    }
}

pub fn print(scores: &Scores, format: &str) -> Result<()> {
    if format == "json" {
        println!("{}", serde_json::to_string_pretty(scores)?);
    } else {
        print!("{}", format_table(scores));
    }
    Ok(())
}

pub fn run(a: ScoreArgs) -> Result<()> {
    let hyps = read_hypotheses(&a.hyp).with_context(|| format!("reading hypotheses {}", a.hyp.display()))?;
    let refs = read_references(&a.refs).with_context(|| format!("reading references {}", a.refs.display()))?;
    let scores = score_all(&hyps, &refs, &a.metrics.options())?;
    print(&scores, &a.format)
}
