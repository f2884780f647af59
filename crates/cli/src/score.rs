//! `lowrank score`: the E2E NLG metrics of a hypothesis file against references.
use anyhow::{Context, Result};
use lowrank_metrics::{format_table, read_hypotheses, read_references, score_all, BleuNistMode, MeteorSource, ScoreOptions};
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
    /// `e2e`: BLEU, NIST, METEOR, ROUGE-L, CIDEr as the E2E NLG scripts compute them;
    /// `sacrebleu`: corpus BLEU as `sacrebleu` computes it (13a, mixed case; translation).
    #[arg(long, default_value = "e2e", value_parser = ["e2e", "sacrebleu"])]
    pub metrics: String,
    /// With `--metrics sacrebleu`: lowercase hypotheses and references first.
    #[arg(long)]
    pub lowercase: bool,
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

/// Scores `hyps` against `refs` as `m` says; returns the JSON written to scores.json and the
/// text printed.
pub fn compute(hyps: &[String], refs: &[Vec<String>], m: &MetricArgs) -> Result<(serde_json::Value, String)> {
    lowrank_metrics::check_inputs(hyps, refs)?;
    if m.metrics == "sacrebleu" {
        let b = lowrank_metrics::sacrebleu::corpus_bleu(hyps, refs, m.lowercase);
        let json = serde_json::json!({
            "bleu": b.score, "precisions": b.precisions, "bp": b.bp, "sys_len": b.sys_len, "ref_len": b.ref_len,
            "signature": b.signature(),
        });
        return Ok((json, format!("{}\n", b.format_with_signature())));
    }
    let scores = score_all(hyps, refs, &m.options())?;
    Ok((serde_json::to_value(&scores)?, format_table(&scores)))
}

pub fn run(a: ScoreArgs) -> Result<()> {
    let hyps = read_hypotheses(&a.hyp).with_context(|| format!("reading hypotheses {}", a.hyp.display()))?;
    let refs = read_references(&a.refs).with_context(|| format!("reading references {}", a.refs.display()))?;
    let (json, text) = compute(&hyps, &refs, &a.metrics)?;
    if a.format == "json" {
        println!("{}", serde_json::to_string_pretty(&json)?);
    } else {
        print!("{text}");
    }
    Ok(())
}
