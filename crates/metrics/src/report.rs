//! Score container and printing.

use serde::{Deserialize, Serialize};

/// The five E2E metrics, reported the way `measure_scores.py` prints them
/// (BLEU as a fraction, e.g. 0.6925; NIST e.g. 8.5; METEOR, ROUGE-L as fractions; CIDEr
/// around 2).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Scores {
    pub bleu: f64,
    pub nist: f64,
    /// `None` when METEOR could not be computed (see `meteor_unavailable_reason`).
    pub meteor: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meteor_unavailable_reason: Option<String>,
    pub rouge_l: f64,
    pub cider: f64,
}

impl Scores {
    /// JSON (pretty-printed).
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("scores serialize")
    }
}

/// The table `measure_scores.py` prints (`SCORES:` header, `%.4f` values).
pub fn format_table(s: &Scores) -> String {
    let mut out = String::from("SCORES:\n==============\n");
    out.push_str(&format!("BLEU: {:.4}\n", s.bleu));
    out.push_str(&format!("NIST: {:.4}\n", s.nist));
    match s.meteor {
        Some(m) => out.push_str(&format!("METEOR: {:.4}\n", m)),
        None => out.push_str(&format!(
            "METEOR: n/a ({})\n",
            s.meteor_unavailable_reason
                .as_deref()
                .unwrap_or("not computed")
        )),
    }
    out.push_str(&format!("ROUGE_L: {:.4}\n", s.rouge_l));
    out.push_str(&format!("CIDEr: {:.4}\n", s.cider));
    out
}
