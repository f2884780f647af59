//! Shared by the fuzz targets: a scratch folder per process to write an input where the code
//! under test reads files, and the fixtures' model layouts.
use std::path::{Path, PathBuf};

/// `$TMPDIR/lowrank-fuzz-PID/` (created once).
pub fn scratch() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lowrank-fuzz-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    dir
}

/// Writes `bytes` to `name` in the scratch folder and returns its path.
pub fn file(name: &str, bytes: &[u8]) -> PathBuf {
    let p = scratch().join(name);
    if let Some(parent) = p.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    std::fs::write(&p, bytes).expect("the scratch folder is writable");
    p
}

/// The repository root (the fuzz crate lives in `fuzz/`).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Splits `data` at the first `sep` (all of it and nothing when absent).
pub fn split_at_byte(data: &[u8], sep: u8) -> (&[u8], &[u8]) {
    match data.iter().position(|&b| b == sep) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[]),
    }
}
