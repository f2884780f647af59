//! Helpers shared by the parity and op tests: golden files, masked maximum differences, random
//! tensors.
#![allow(dead_code)]
use candle_core::{DType, Device, Tensor};
use lowrank_models::weights::read_safetensors;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub fn fixture_dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures").join(name)
}

pub fn read_golden(path: &Path) -> BTreeMap<String, Tensor> {
    read_safetensors(path, &Device::Cpu, None).unwrap()
}

pub fn rows_i64(t: &Tensor) -> Vec<Vec<i64>> {
    t.to_vec2::<i64>().unwrap()
}

pub fn ids_u32(t: &Tensor) -> Vec<Vec<u32>> {
    rows_i64(t).into_iter().map(|r| r.into_iter().map(|x| x as u32).collect()).collect()
}

/// Max |a − b| over positions whose mask is 1, and max |b| for a relative figure.
pub fn max_diff_masked(a: &Tensor, b: &Tensor, mask: &[Vec<i64>]) -> (f32, f32) {
    let a = a.to_dtype(DType::F32).unwrap().to_vec3::<f32>().unwrap();
    let b = b.to_vec3::<f32>().unwrap();
    let (mut d, mut m) = (0f32, 0f32);
    for (bi, row) in mask.iter().enumerate() {
        for (ti, &keep) in row.iter().enumerate() {
            if keep == 1 {
                for (x, y) in a[bi][ti].iter().zip(&b[bi][ti]) {
                    d = d.max((x - y).abs());
                    m = m.max(y.abs());
                }
            }
        }
    }
    (d, m)
}

/// Max |a − b| over decoder positions with a label (not -100), and max |b| there.
pub fn max_diff_labelled(a: &Tensor, b: &Tensor, labels: &[Vec<i64>]) -> (f32, f32) {
    let mask: Vec<Vec<i64>> = labels.iter().map(|r| r.iter().map(|&l| i64::from(l != -100)).collect()).collect();
    max_diff_masked(a, b, &mask)
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

pub fn max_abs(a: &Tensor) -> f32 {
    a.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

pub fn scalar(t: &Tensor) -> f32 {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()[0]
}

/// Uniform values in [-1, 1) as an f64 CPU tensor of `shape`, from the deterministic `seed`.
pub fn rand(shape: &[usize], seed: u64) -> Tensor {
    let mut g = lowrank_models::generate::SplitMix64(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f64> = (0..n).map(|_| g.next_f64() * 2.0 - 1.0).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}
