//! Named tensors of a checkpoint, in Hugging Face naming, loaded from safetensors.
use crate::error::{ModelError, Result};
use crate::frozen_weight::FrozenWeight;
use crate::packed_matrix::PackedMatrix;
use candle_core::{DType, Device, Tensor};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A checkpoint's tensors by Hugging Face name (`model.layers.0.self_attn.q_proj.weight`).
#[derive(Debug, Clone, Default)]
pub struct Weights {
    pub tensors: BTreeMap<String, Tensor>,
    /// Linear weights kept block-quantized (a GGUF base model loaded for training); a name is in
    /// `tensors` or here, never both.
    pub packed: BTreeMap<String, Arc<PackedMatrix>>,
    /// Where they came from, for error messages.
    pub source: String,
    /// Answers every request with a zero of the asked shape that takes no memory (a broadcast
    /// scalar): for building a model only to read its layout.
    pub shapes_only: bool,
    /// Names whose tensor was transposed on load (GPT-2's Conv1D weights): shape errors give
    /// these as the file stores them.
    pub transposed: std::collections::BTreeSet<String>,
}

impl Weights {
    /// A linear layer's frozen weight `name`, checked against `shape`: packed where it is kept
    /// packed, dense otherwise.
    pub fn frozen(&self, name: &str, shape: &[usize]) -> Result<FrozenWeight> {
        match self.packed.get(name) {
            Some(p) => {
                let (r, c) = p.dims();
                if [r, c] != shape {
                    return Err(ModelError::ShapeMismatch { name: name.to_string(), expected: shape.to_vec(), actual: vec![r, c] });
                }
                Ok(FrozenWeight::Packed(p.clone()))
            }
            None => Ok(FrozenWeight::Dense(self.get(name, shape)?)),
        }
    }

    /// Sets `name` to a dense tensor (replacing a packed one of that name).
    pub fn insert(&mut self, name: String, t: Tensor) {
        self.packed.remove(&name);
        self.tensors.insert(name, t);
    }

    /// Every tensor dense (packed ones expanded to f32), for writing a checkpoint.
    pub fn dense_tensors(&self) -> Result<BTreeMap<String, Tensor>> {
        let mut out = self.tensors.clone();
        for (name, p) in &self.packed {
            out.insert(name.clone(), p.to_tensor(&Device::Cpu)?);
        }
        Ok(out)
    }

    /// Bytes held by packed weights, and what they would take in f32.
    pub fn packed_bytes(&self) -> (usize, usize) {
        self.packed.values().fold((0, 0), |(s, f), p| (s + p.stored_bytes(), f + 4 * p.dims().0 * p.dims().1))
    }

    /// No tensors: every request is answered with a zero of the asked shape (see `shapes_only`).
    pub fn shapes_only() -> Self {
        Self { shapes_only: true, source: "(shapes only)".into(), ..Default::default() }
    }

    /// The tensor `name`, checked against `shape`.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        if self.shapes_only {
            return Ok(Tensor::new(0f32, &Device::Cpu)?.broadcast_as(shape)?);
        }
        let t = self.get_any(name)?;
        if t.dims() != shape {
            if self.transposed.contains(name) {
                let rev = |d: &[usize]| d.iter().rev().copied().collect::<Vec<_>>();
                return Err(ModelError::ShapeMismatchStored { name: name.to_string(), source_desc: self.source.clone(), expected: rev(shape), actual: rev(t.dims()) });
            }
            return Err(ModelError::ShapeMismatch { name: name.to_string(), expected: shape.to_vec(), actual: t.dims().to_vec() });
        }
        Ok(t)
    }

    /// The tensor `name` (a packed one expanded to f32).
    pub fn get_any(&self, name: &str) -> Result<Tensor> {
        if let Some(t) = self.tensors.get(name) {
            return Ok(t.clone());
        }
        match self.packed.get(name) {
            Some(p) => Ok(p.to_tensor(&Device::Cpu)?),
            None => Err(ModelError::MissingWeight { name: name.to_string(), source_desc: self.source.clone() }),
        }
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name) || self.packed.contains_key(name)
    }

    /// Total number of scalar parameters.
    pub fn parameter_count(&self) -> usize {
        self.tensors.values().map(|t| t.elem_count()).sum::<usize>() + self.packed.values().map(|p| p.dims().0 * p.dims().1).sum::<usize>()
    }
}

fn st_dtype(path: &Path, name: &str, d: safetensors::Dtype) -> Result<DType> {
    Ok(match d {
        safetensors::Dtype::F32 => DType::F32,
        safetensors::Dtype::F16 => DType::F16,
        safetensors::Dtype::BF16 => DType::BF16,
        safetensors::Dtype::F64 => DType::F64,
        safetensors::Dtype::I64 => DType::I64,
        safetensors::Dtype::I32 => DType::I32,
        safetensors::Dtype::U32 => DType::U32,
        safetensors::Dtype::U8 => DType::U8,
        other => {
            return Err(ModelError::Safetensors {
                path: path.to_path_buf(),
                reason: format!("tensor `{name}` has unsupported dtype {other:?}"),
            })
        }
    })
}

/// Reads every tensor of one safetensors file. Float tensors are converted to `float_dtype`
/// when given; integer tensors keep their type. A truncated or corrupt file names the file.
pub fn read_safetensors(path: &Path, device: &Device, float_dtype: Option<DType>) -> Result<BTreeMap<String, Tensor>> {
    let bytes = std::fs::read(path).map_err(|e| ModelError::io(path, e))?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| ModelError::Safetensors {
        path: path.to_path_buf(),
        reason: format!("{e} (truncated or not a safetensors file?)"),
    })?;
    let mut out = BTreeMap::new();
    for (name, view) in st.tensors() {
        let dtype = st_dtype(path, &name, view.dtype())?;
        let bad = crate::finite::count_nonfinite_bytes(dtype, view.data());
        if bad > 0 {
            return Err(ModelError::NonFinite { what: format!("{} (damaged weights)", path.display()), name, count: bad });
        }
        let t = Tensor::from_raw_buffer(view.data(), dtype, view.shape(), &Device::Cpu)
            .map_err(|e| ModelError::Safetensors { path: path.to_path_buf(), reason: format!("tensor `{name}` {:?}: {e}", view.shape()) })?;
        let t = match float_dtype {
            Some(fd) if dtype.is_float() && dtype != fd => t.to_dtype(fd)?,
            _ => t,
        };
        out.insert(name, t.to_device(device)?);
    }
    Ok(out)
}

/// Writes tensors to `path` atomically (temporary file in the same folder, then rename).
pub fn write_safetensors(path: &Path, tensors: &BTreeMap<String, Tensor>, metadata: Option<std::collections::HashMap<String, String>>) -> Result<()> {
    let mut views = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let t = t.to_device(&Device::Cpu)?.contiguous()?;
        let (dtype, bytes) = tensor_bytes(&t)?;
        views.push((name.clone(), dtype, t.dims().to_vec(), bytes));
    }
    let data: Vec<(String, safetensors::tensor::TensorView<'_>)> = views
        .iter()
        .map(|(n, d, s, b)| {
            safetensors::tensor::TensorView::new(*d, s.clone(), b)
                .map(|v| (n.clone(), v))
                .map_err(|e| ModelError::Invalid(format!("tensor `{n}`: {e}")))
        })
        .collect::<Result<_>>()?;
    let bytes = safetensors::tensor::serialize(data, &metadata)
        .map_err(|e| ModelError::Invalid(format!("serialising {}: {e}", path.display())))?;
    write_atomic(path, &bytes)
}

fn tensor_bytes(t: &Tensor) -> Result<(safetensors::Dtype, Vec<u8>)> {
    fn raw<T: Copy>(v: Vec<T>) -> Vec<u8> {
        let n = std::mem::size_of_val(v.as_slice());
        let mut out = vec![0u8; n];
        // SAFETY: plain-old-data numeric types copied byte for byte into a buffer of equal size.
        unsafe { std::ptr::copy_nonoverlapping(v.as_ptr() as *const u8, out.as_mut_ptr(), n) };
        out
    }
    let flat = t.flatten_all()?;
    Ok(match t.dtype() {
        DType::F32 => (safetensors::Dtype::F32, raw(flat.to_vec1::<f32>()?)),
        DType::F16 => (safetensors::Dtype::F16, raw(flat.to_vec1::<half::f16>()?)),
        DType::BF16 => (safetensors::Dtype::BF16, raw(flat.to_vec1::<half::bf16>()?)),
        DType::F64 => (safetensors::Dtype::F64, raw(flat.to_vec1::<f64>()?)),
        DType::I64 => (safetensors::Dtype::I64, raw(flat.to_vec1::<i64>()?)),
        DType::U32 => (safetensors::Dtype::U32, raw(flat.to_vec1::<u32>()?)),
        DType::U8 => (safetensors::Dtype::U8, raw(flat.to_vec1::<u8>()?)),
        other => return Err(ModelError::Invalid(format!("cannot save dtype {other:?}"))),
    })
}

/// Writes `bytes` to `path` through a temporary file and a rename, so a crash never leaves a
/// half-written file under the final name.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| ModelError::write_io(dir, e))?;
    let file_name = path.file_name().map(|s| s.to_string_lossy().to_string()).unwrap_or_else(|| "out".into());
    let tmp: PathBuf = dir.join(format!(".{file_name}.tmp-{}", std::process::id()));
    if let Err(e) = injected_fault(path).and_then(|()| std::fs::write(&tmp, bytes)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(ModelError::write_io(path, e));
    }
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        ModelError::write_io(path, e)
    })
}

/// Writes a whole folder `dir` as a unit: `fill` writes into a temporary sibling
/// (`.NAME.tmp-PID`), which is then renamed into place. What was at `dir` before (a folder or a
/// file) is replaced only once the new folder is complete; on any failure the temporary is
/// removed and `dir` is left as it was.
pub fn write_dir_atomic<E: From<ModelError>>(dir: &Path, fill: impl FnOnce(&Path) -> std::result::Result<(), E>) -> std::result::Result<(), E> {
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| ModelError::write_io(parent, e))?;
    let name = dir.file_name().map(|s| s.to_string_lossy().to_string()).unwrap_or_else(|| "out".into());
    let pid = std::process::id();
    let tmp = parent.join(format!(".{name}.tmp-{pid}"));
    remove_any(&tmp);
    if let Err(e) = std::fs::create_dir_all(&tmp) {
        remove_any(&tmp);
        return Err(ModelError::write_io(dir, e).into());
    }
    if let Err(e) = fill(&tmp) {
        remove_any(&tmp);
        return Err(e);
    }
    if let Err(e) = injected_fault(dir) {
        remove_any(&tmp);
        return Err(ModelError::write_io(dir, e).into());
    }
    let old = parent.join(format!(".{name}.old-{pid}"));
    let had_old = std::fs::symlink_metadata(dir).is_ok();
    if had_old {
        remove_any(&old);
        if let Err(e) = std::fs::rename(dir, &old) {
            remove_any(&tmp);
            return Err(ModelError::write_io(dir, e).into());
        }
    }
    if let Err(e) = std::fs::rename(&tmp, dir) {
        if had_old {
            let _ = std::fs::rename(&old, dir);
        }
        remove_any(&tmp);
        return Err(ModelError::write_io(dir, e).into());
    }
    if had_old {
        remove_any(&old);
    }
    Ok(())
}

/// Test hooks for the fault and crash tests (never set in normal use): a write whose target
/// path ends with `LOWRANK_FAIL_WRITE` fails as a full disk would, and every write first sleeps
/// `LOWRANK_WRITE_DELAY_MS` milliseconds (widening the windows a SIGKILL can hit).
fn injected_fault(path: &Path) -> std::io::Result<()> {
    if let Some(ms) = std::env::var("LOWRANK_WRITE_DELAY_MS").ok().and_then(|v| v.parse::<u64>().ok()) {
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
    match std::env::var_os("LOWRANK_FAIL_WRITE") {
        Some(target) if !target.is_empty() && path.as_os_str().to_string_lossy().ends_with(&*target.to_string_lossy()) => {
            Err(std::io::Error::other("No space left on device (injected by LOWRANK_FAIL_WRITE)"))
        }
        _ => Ok(()),
    }
}

/// Removes a file or a folder tree, ignoring errors (cleanup of temporaries).
pub fn remove_any(path: &Path) {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => {
            let _ = std::fs::remove_dir_all(path);
        }
        Ok(_) => {
            let _ = std::fs::remove_file(path);
        }
        Err(_) => {}
    }
}

/// Removes the temporaries (`.NAME.tmp-PID`, `.NAME.old-PID`) that [`write_atomic`] and
/// [`write_dir_atomic`] left in `dir` when a process was killed mid-write: those of processes
/// no longer running (and this process's own). Returns what was removed.
pub fn remove_stale_temporaries(dir: &Path) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return removed };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if !name.starts_with('.') {
            continue;
        }
        let pid = name.rsplit_once(".tmp-").or_else(|| name.rsplit_once(".old-")).and_then(|(_, p)| p.parse::<u32>().ok());
        let Some(pid) = pid else { continue };
        if pid == std::process::id() || !process_alive(pid) {
            remove_any(&entry.path());
            removed.push(entry.path());
        }
    }
    removed
}

/// Whether process `pid` is running (Linux: `/proc/PID`; elsewhere assumed gone).
fn process_alive(pid: u32) -> bool {
    Path::new("/proc").join(pid.to_string()).exists()
}

/// Loads `model.safetensors`, or every shard listed in `model.safetensors.index.json`, of a
/// Hugging Face folder.
pub fn load_hf_weights(dir: &Path, device: &Device, dtype: DType) -> Result<Weights> {
    let single = dir.join("model.safetensors");
    let index = dir.join("model.safetensors.index.json");
    let files: Vec<PathBuf> = if single.exists() {
        vec![single]
    } else if index.exists() {
        let text = std::fs::read_to_string(&index).map_err(|e| ModelError::io(&index, e))?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|source| ModelError::Json { path: index.clone(), source })?;
        let map = v
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| ModelError::MissingConfigKey { path: index.clone(), key: "weight_map".into() })?;
        let mut names: Vec<String> = map.values().filter_map(|f| f.as_str().map(String::from)).collect();
        names.sort();
        names.dedup();
        names.into_iter().map(|f| dir.join(f)).collect()
    } else {
        return Err(ModelError::io(
            &single,
            std::io::Error::new(std::io::ErrorKind::NotFound, "no model.safetensors or model.safetensors.index.json in the folder"),
        ));
    };
    let mut tensors = BTreeMap::new();
    for f in &files {
        tensors.extend(read_safetensors(f, device, Some(dtype))?);
    }
    Ok(Weights { tensors, packed: BTreeMap::new(), source: dir.display().to_string(), ..Default::default() })
}
