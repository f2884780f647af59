//! Greedy decoding and beam search against Hugging Face `generate` on the tiny Llama fixture
//! (with the PEFT LoRA adapter merged into the weights, and without it).
use candle_core::{DType, Device, Tensor};
use lowrank_models::beam::{beam_search, no_repeat_ngram_banned, BeamParams};
use lowrank_models::generate::{generate, SamplingParams};
use lowrank_models::weights::read_safetensors;
use lowrank_models::{load_model, Llama, PlainHook};
use std::collections::BTreeMap;
use std::path::PathBuf;

const PAD: u32 = 0;
const EOS: u32 = 2;

fn fx() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-llama")
}

fn golden() -> BTreeMap<String, Tensor> {
    read_safetensors(&fx().join("golden.safetensors"), &Device::Cpu, None).unwrap()
}

fn row(g: &BTreeMap<String, Tensor>, key: &str) -> Vec<u32> {
    g[key].to_vec2::<i64>().unwrap()[0].iter().map(|&x| x as u32).collect()
}

/// The plain tiny Llama, or the same with `peft-adapter` merged: W += (alpha / r) · B · A.
fn model(merged: bool) -> Llama {
    let mut m = load_model(&fx().join("hf"), &Device::Cpu, DType::F32).unwrap();
    if merged {
        let dir = fx().join("peft-adapter");
        let cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("adapter_config.json")).unwrap()).unwrap();
        let scale = cfg["lora_alpha"].as_f64().unwrap() / cfg["r"].as_f64().unwrap();
        assert_eq!(scale, 2.0);
        let ad = read_safetensors(&dir.join("adapter_model.safetensors"), &Device::Cpu, None).unwrap();
        let mut n = 0;
        for (key, a) in &ad {
            let Some(path) = key.strip_suffix(".lora_A.weight") else { continue };
            let b = &ad[&format!("{path}.lora_B.weight")];
            let name = format!("{}.weight", path.strip_prefix("base_model.model.").unwrap());
            let w = m.weights.tensors[&name].clone();
            let delta = (b.matmul(a).unwrap() * scale).unwrap();
            m.weights.tensors.insert(name, (w + delta).unwrap());
            n += 1;
        }
        assert_eq!(n, 4, "q_proj and v_proj of 2 layers");
    }
    Llama::new(m.config.as_llama().unwrap(), &m.weights, &PlainHook, &Device::Cpu).unwrap()
}

fn fixture_beam_params() -> BeamParams {
    BeamParams {
        num_beams: 3,
        max_new_tokens: 12,
        min_new_tokens: 12,
        length_penalty: 1.0,
        no_repeat_ngram_size: 0,
        early_stopping: true,
        eos_ids: vec![EOS],
    }
}

#[test]
fn greedy_matches_hf_with_and_without_adapter() {
    let g = golden();
    let prompt = row(&g, "greedy.prompt_ids");
    let p = SamplingParams { max_new_tokens: 12, ignore_stop: true, ..Default::default() };
    for (merged, key) in [(true, "greedy.output_ids"), (false, "greedy.base_output_ids")] {
        let want = row(&g, key)[prompt.len()..].to_vec();
        let got = generate(&model(merged), &[prompt.clone()], &p, PAD).unwrap();
        println!("{key}: hf {want:?} ours {:?}", got[0]);
        assert_eq!(got[0], want, "{key}");
    }
}

#[test]
fn beam_search_matches_hf() {
    let g = golden();
    let prompt = row(&g, "greedy.prompt_ids");
    let want = row(&g, "beam.output_ids")[prompt.len()..].to_vec();
    let greedy = row(&g, "greedy.output_ids")[prompt.len()..].to_vec();
    assert_ne!(want, greedy, "the fixture prompt is one where beam search and greedy disagree");
    let got = beam_search(&model(true), &[prompt], &fixture_beam_params(), PAD).unwrap();
    println!("beam: hf {want:?} ours {:?}", got[0]);
    assert_eq!(got[0], want);
}

#[test]
fn batched_beam_search_equals_one_prompt_at_a_time() {
    let g = golden();
    let m = model(true);
    let a = row(&g, "greedy.prompt_ids");
    let b: Vec<u32> = g["input_ids"].to_vec2::<i64>().unwrap()[0][..8].iter().map(|&x| x as u32).collect();
    let c = vec![1u32, 37, 120];
    let prompts = vec![a, b, c];
    let settings = [
        fixture_beam_params(),
        // EOS allowed: hypotheses may finish early; heuristic early stopping; n-gram ban.
        BeamParams { num_beams: 4, max_new_tokens: 10, min_new_tokens: 0, no_repeat_ngram_size: 2, early_stopping: false, ..fixture_beam_params() },
        BeamParams { num_beams: 2, max_new_tokens: 8, min_new_tokens: 3, length_penalty: 0.5, eos_ids: vec![EOS, 7], ..fixture_beam_params() },
        // Frequent tokens as "EOS" so that hypotheses really finish early, at different lengths.
        BeamParams { num_beams: 3, max_new_tokens: 12, min_new_tokens: 0, eos_ids: vec![226, 343, 389, 260], ..fixture_beam_params() },
        BeamParams { num_beams: 3, max_new_tokens: 12, min_new_tokens: 2, early_stopping: false, length_penalty: 2.0, eos_ids: vec![226, 343, 389, 260], ..fixture_beam_params() },
    ];
    let mut finished_early = 0;
    for p in &settings {
        let batched = beam_search(&m, &prompts, p, PAD).unwrap();
        for (i, pr) in prompts.iter().enumerate() {
            let single = beam_search(&m, std::slice::from_ref(pr), p, PAD).unwrap();
            assert_eq!(batched[i], single[0], "prompt {i} with {p:?}");
            assert!(batched[i].len() <= p.max_new_tokens);
            assert!(batched[i].len() >= p.min_new_tokens.min(p.max_new_tokens));
            // EOS only as the (removed) last token: inside a continuation it would have ended it.
            let inner = &batched[i][..batched[i].len().saturating_sub(1)];
            assert!(!inner.iter().any(|t| p.eos_ids.contains(t)), "{:?}", batched[i]);
            if batched[i].len() < p.max_new_tokens {
                finished_early += 1;
            }
            if p.no_repeat_ngram_size == 2 {
                let mut all = pr.clone();
                all.extend_from_slice(&batched[i]);
                let mut seen = std::collections::HashSet::new();
                assert!(all.windows(2).all(|w| seen.insert((w[0], w[1]))), "repeated bigram in {all:?}");
            }
        }
        println!("{p:?}: {batched:?}");
    }
    assert!(finished_early > 0, "some hypotheses should end with an EOS id");
}

#[test]
fn one_beam_is_greedy_with_eos_banned() {
    let g = golden();
    let m = model(true);
    let prompt = row(&g, "greedy.prompt_ids");
    let p = BeamParams { num_beams: 1, ..fixture_beam_params() };
    let got = beam_search(&m, &[prompt.clone()], &p, PAD).unwrap();
    assert_eq!(got[0], row(&g, "greedy.output_ids")[prompt.len()..].to_vec());
}

#[test]
fn bad_params_are_errors() {
    let g = golden();
    let m = model(false);
    let prompt = row(&g, "greedy.prompt_ids");
    assert!(beam_search(&m, &[prompt.clone()], &BeamParams { num_beams: 0, ..fixture_beam_params() }, PAD).is_err());
    assert!(beam_search(&m, &[vec![]], &fixture_beam_params(), PAD).is_err());
    assert!(beam_search(&m, &[vec![100_000]], &fixture_beam_params(), PAD).is_err());
    assert_eq!(beam_search(&m, &[], &fixture_beam_params(), PAD).unwrap(), Vec::<Vec<u32>>::new());
    assert_eq!(beam_search(&m, &[prompt], &BeamParams { max_new_tokens: 0, ..fixture_beam_params() }, PAD).unwrap(), vec![Vec::<u32>::new()]);
}

#[test]
fn ngram_ban() {
    // n = 0: off; too short for the prefix: nothing.
    assert!(no_repeat_ngram_banned(&[1, 2, 1], 0).is_empty());
    assert!(no_repeat_ngram_banned(&[], 3).is_empty());
    assert!(no_repeat_ngram_banned(&[5], 3).is_empty());
    // n = 1: every token seen.
    assert_eq!(no_repeat_ngram_banned(&[3, 1, 3, 2], 1), vec![1, 2, 3]);
    // n = 2: what followed the last token before.
    assert_eq!(no_repeat_ngram_banned(&[1, 2, 1, 3, 1], 2), vec![2, 3]);
    assert_eq!(no_repeat_ngram_banned(&[1, 2, 3], 2), Vec::<u32>::new());
    // n = 3: the last two tokens (4, 5) occurred twice, followed by 6 and 7.
    assert_eq!(no_repeat_ngram_banned(&[4, 5, 6, 4, 5, 7, 4, 5], 3), vec![6, 7]);
    // A prefix overlapping itself: 1 1 1 -> after (1, 1) comes 1.
    assert_eq!(no_repeat_ngram_banned(&[1, 1, 1], 3), vec![1]);
    assert_eq!(no_repeat_ngram_banned(&[1, 1], 3), Vec::<u32>::new());
    // n larger than the sequence + 1.
    assert!(no_repeat_ngram_banned(&[1, 2], 4).is_empty());
}
