//! Which linear layers get an adapter: by names (PEFT's suffix match), by regular expression
//! (full match), or "all-linear" (every linear layer but the output head), minus exclusions.
use crate::error::{PeftError, Result};
use regex::Regex;
use serde::{Deserialize, Serialize};

/// The modules to adapt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TargetSpec {
    /// A module matches a name when its path equals it or ends with `.name` (PEFT's rule).
    Names(Vec<String>),
    /// A single string: `"all-linear"`, or a regular expression that must match the whole path.
    Pattern(String),
}

impl Default for TargetSpec {
    fn default() -> Self {
        TargetSpec::Names(vec!["q_proj".into(), "v_proj".into()])
    }
}

/// PEFT's suffix rule: `path == name` or `path` ends with `.name`.
pub fn suffix_match(path: &str, name: &str) -> bool {
    path == name || path.ends_with(&format!(".{name}"))
}

fn full_regex(pattern: &str) -> Result<Regex> {
    Regex::new(&format!("^(?:{pattern})$")).map_err(|e| PeftError::BadRegex { pattern: pattern.into(), reason: e.to_string() })
}

/// Whether `pattern` (a regular expression) matches the whole of `path`.
pub fn full_match(path: &str, pattern: &str) -> Result<bool> {
    Ok(full_regex(pattern)?.is_match(path))
}

/// PEFT's rule for rank/alpha patterns: `(.*\.)?(pattern)$` matched from the start.
pub fn pattern_match(path: &str, pattern: &str) -> Result<bool> {
    let re = Regex::new(&format!(r"^(?:.*\.)?(?:{pattern})$")).map_err(|e| PeftError::BadRegex { pattern: pattern.into(), reason: e.to_string() })?;
    Ok(re.is_match(path))
}

/// The distinct last components of `paths` (`q_proj`, `v_proj`, ...), for error messages.
pub fn leaf_names(paths: &[&str]) -> String {
    let mut leaves: Vec<&str> = paths.iter().map(|p| p.rsplit('.').next().unwrap_or(p)).collect();
    leaves.sort();
    leaves.dedup();
    leaves.join(", ")
}

/// The paths of `modules` selected by `spec` and not excluded. Every name or pattern must match
/// at least one module.
pub fn select(spec: &TargetSpec, exclude: &[String], modules: &[&str]) -> Result<Vec<String>> {
    let available = || leaf_names(modules);
    let mut chosen: Vec<String> = match spec {
        // Parts of fused projections (GPT-2's `c_attn.q`) are not separate layers.
        TargetSpec::Pattern(p) if p == "all-linear" => modules.iter().filter(|m| crate::methods::lora::parts::part_of(m, modules).is_none()).map(|s| s.to_string()).collect(),
        TargetSpec::Pattern(p) => {
            let re = full_regex(p)?;
            let hits: Vec<String> = modules.iter().filter(|m| re.is_match(m)).map(|s| s.to_string()).collect();
            if hits.is_empty() {
                let example = modules.first().copied().unwrap_or("model.layers.0.self_attn.q_proj");
                return Err(PeftError::Invalid(format!("target pattern `{p}` is a regular expression matched against whole module paths (such as `{example}`) and matches none; a list of names (e.g. [\"{}\"]) matches by suffix", p)));
            }
            hits
        }
        TargetSpec::Names(names) => {
            if names.is_empty() {
                return Err(PeftError::Invalid("target_modules is empty".into()));
            }
            for n in names {
                if !modules.iter().any(|m| suffix_match(m, n)) {
                    return Err(PeftError::NoMatch { pattern: n.clone(), available: available() });
                }
            }
            modules.iter().filter(|m| names.iter().any(|n| suffix_match(m, n))).map(|s| s.to_string()).collect()
        }
    };
    for ex in exclude {
        let re = full_regex(ex)?;
        let before = chosen.len();
        chosen.retain(|m| !(suffix_match(m, ex) || re.is_match(m)));
        if chosen.len() == before && !modules.iter().any(|m| suffix_match(m, ex) || re.is_match(m)) {
            return Err(PeftError::NoMatch { pattern: ex.clone(), available: available() });
        }
    }
    if chosen.is_empty() {
        return Err(PeftError::Invalid("every target module was excluded".into()));
    }
    if let Some((part, parent)) = chosen.iter().find_map(|m| crate::methods::lora::parts::part_of(m, modules).filter(|(p, _)| chosen.contains(p)).map(|(p, _)| (m.clone(), p))) {
        return Err(PeftError::Invalid(format!("`{parent}` and its part `{part}` are both selected: adapt the fused layer or its parts, not both")));
    }
    Ok(chosen)
}

#[cfg(test)]
mod tests {
    use super::*;
    const M: [&str; 4] = ["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj", "model.layers.0.mlp.up_proj", "model.layers.1.self_attn.q_proj"];

    #[test]
    fn names_match_by_suffix() {
        let got = select(&TargetSpec::Names(vec!["q_proj".into()]), &[], &M).unwrap();
        assert_eq!(got, vec![M[0].to_string(), M[3].to_string()]);
    }

    #[test]
    fn regex_must_match_whole_path() {
        let got = select(&TargetSpec::Pattern(r".*layers\.1\..*q_proj".into()), &[], &M).unwrap();
        assert_eq!(got, vec![M[3].to_string()]);
        assert!(select(&TargetSpec::Pattern("q_proj".into()), &[], &M).is_err());
    }

    #[test]
    fn unmatched_name_lists_existing_modules() {
        let err = select(&TargetSpec::Names(vec!["query".into()]), &[], &M).unwrap_err().to_string();
        assert!(err.contains("query") && err.contains("q_proj, up_proj, v_proj"), "{err}");
    }

    #[test]
    fn exclusions_apply() {
        let got = select(&TargetSpec::Pattern("all-linear".into()), &["model.layers.0.mlp.up_proj".into()], &M).unwrap();
        assert_eq!(got.len(), 3);
    }

    #[test]
    fn rank_pattern_rule() {
        assert!(pattern_match("model.layers.0.self_attn.q_proj", "q_proj").unwrap());
        assert!(pattern_match("model.layers.0.self_attn.q_proj", r"layers\.0\.self_attn\.q_proj").unwrap());
        assert!(!pattern_match("model.layers.0.self_attn.q_proj", "proj").unwrap());
    }
}
