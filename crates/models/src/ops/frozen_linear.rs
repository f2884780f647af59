//! `y = x · Wᵀ` for a frozen weight `W`, whose backward returns only the input gradient.
//!
//! candle's matmul backward always computes the gradient of both operands; for a frozen base
//! weight that is wasted work (about a third of a LoRA step). This op keeps `W` inside the op, so
//! autograd never sees it as an operand. The weight may be kept packed (block-quantized); it is
//! then expanded to f32 for each product. f32 products go through [`frozen_product`], which computes
//! them in bf16 when the thread has switched that on (see [`super::bf16_gemm`]).
use super::bf16_gemm::frozen_product;
use crate::frozen_weight::FrozenWeight;
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Storage, Tensor};

/// A frozen weight `w: (d_out, d_in)` applied as `x: (..., d_in) -> (..., d_out)`.
#[derive(Clone, Debug)]
pub struct FrozenMatmul {
    /// `(d_out, d_in)`, contiguous.
    pub weight: FrozenWeight,
    /// When true the op computes `x · W` instead (`x: (..., d_out) -> (..., d_in)`): the backward.
    pub transposed: bool,
}

/// `dst (m, n) = x (m, k) · rhs (k, n)` where `rhs` is `w` read with the given strides.
pub(crate) fn gemm_xw<T: 'static + Copy + num_zero::Zero>(
    x: &[T],
    w: &[T],
    (m, n, k): (usize, usize, usize),
    (rhs_cs, rhs_rs): (isize, isize),
) -> Vec<T> {
    let mut dst: Vec<T> = Vec::with_capacity(m * n);
    // SAFETY: the slices have the sizes the strides describe: x (m, k), w (n, k), dst (m, n),
    // all row-major and contiguous; checked by the caller. With `read_dst = false` gemm writes
    // every element of dst without reading it, so the buffer needs no zeroing; its length is set
    // only after the write.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            false,
            x.as_ptr(),
            1,
            k as isize,
            w.as_ptr(),
            rhs_cs,
            rhs_rs,
            T::zero(),
            T::one(),
            false,
            false,
            false,
            gemm::Parallelism::Rayon(candle_core::utils::get_num_threads()),
        );
        dst.set_len(m * n);
    }
    dst
}

/// Minimal zero/one over the float types the op supports.
pub(crate) mod num_zero {
    pub trait Zero {
        fn zero() -> Self;
        fn one() -> Self;
    }
    impl Zero for f32 {
        fn zero() -> Self { 0.0 }
        fn one() -> Self { 1.0 }
    }
    impl Zero for f64 {
        fn zero() -> Self { 0.0 }
        fn one() -> Self { 1.0 }
    }
    impl Zero for half::bf16 {
        fn zero() -> Self { half::bf16::ZERO }
        fn one() -> Self { half::bf16::ONE }
    }
    impl Zero for half::f16 {
        fn zero() -> Self { half::f16::ZERO }
        fn one() -> Self { half::f16::ONE }
    }
}

/// `x (m, k) · W` over a dense CPU weight of x's dtype, read with the given strides.
fn dense_gemm(storage: &CpuStorage, x: std::ops::Range<usize>, weight: &Tensor, mnk: (usize, usize, usize), strides: (isize, isize)) -> candle_core::Result<CpuStorage> {
    let (w_storage, w_layout) = weight.storage_and_layout();
    let (ws, we) = w_layout
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg("frozen-matmul: weight must be contiguous".into()))?;
    Ok(match (storage, &*w_storage) {
        (CpuStorage::F32(xs), Storage::Cpu(CpuStorage::F32(w))) => CpuStorage::F32(frozen_product(&xs[x], &w[ws..we], mnk, strides)),
        (CpuStorage::BF16(xs), Storage::Cpu(CpuStorage::BF16(w))) => CpuStorage::BF16(gemm_xw(&xs[x], &w[ws..we], mnk, strides)),
        (CpuStorage::F16(xs), Storage::Cpu(CpuStorage::F16(w))) => CpuStorage::F16(gemm_xw(&xs[x], &w[ws..we], mnk, strides)),
        (CpuStorage::F64(xs), Storage::Cpu(CpuStorage::F64(w))) => CpuStorage::F64(gemm_xw(&xs[x], &w[ws..we], mnk, strides)),
        _ => {
            return Err(candle_core::Error::Msg(format!(
                "frozen-matmul: input dtype {:?} and weight dtype {:?} must match (f32, f16, bf16 or f64 on cpu)",
                storage.dtype(),
                weight.dtype()
            )))
        }
    })
}

impl CustomOp1 for FrozenMatmul {
    fn name(&self) -> &'static str {
        "frozen-matmul"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (rows, cols) = self.weight.dims2()?;
        // Wᵀ: (cols, rows) read with column step `cols`; W: (rows, cols) read row-major.
        let (n, k, strides) = if self.transposed {
            (cols, rows, (1isize, cols as isize))
        } else {
            (rows, cols, (cols as isize, 1isize))
        };
        let dims = layout.shape().dims();
        let last = *dims.last().ok_or_else(|| candle_core::Error::Msg("frozen-matmul on a scalar".into()))?;
        if last != k {
            return Err(candle_core::Error::ShapeMismatchBinaryOp {
                lhs: layout.shape().clone(),
                rhs: Shape::from((rows, cols)),
                op: "frozen-matmul",
            });
        }
        let m = layout.shape().elem_count() / k;
        let (start, end) = layout
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg("frozen-matmul: input must be contiguous".into()))?;
        let mut out_dims = dims.to_vec();
        let last_dim = out_dims.len() - 1;
        out_dims[last_dim] = n;
        let x_range = start..end;
        let out = match &self.weight {
            FrozenWeight::Packed(_) => match storage {
                CpuStorage::F32(x) => CpuStorage::F32(self.weight.with_f32("frozen-matmul", |w| frozen_product(&x[x_range], w, (m, n, k), strides))?),
                _ => return Err(candle_core::Error::Msg(format!("frozen-matmul: a packed weight needs f32 input, got {:?}", storage.dtype()))),
            },
            FrozenWeight::Dense(weight) => dense_gemm(storage, x_range, weight, (m, n, k), strides)?,
        };
        Ok((out, Shape::from(out_dims)))
    }

    /// cuBLAS against the weight on the GPU (dense, of x's dtype).
    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s: &candle_core::CudaStorage, l: &Layout) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let FrozenWeight::Dense(weight) = &self.weight else {
            return Err(candle_core::Error::Msg("frozen-matmul: a packed weight cannot be multiplied on the GPU".into()));
        };
        let (y, dims) = super::cuda_kernels::with_cuda(weight, "frozen-matmul", |ws, wl| super::cuda_fused::frozen_product(s, l, ws, wl, self.transposed))?;
        Ok((y, Shape::from(dims)))
    }

    /// `grad_x = grad_y · W`: `(..., d_out) -> (..., d_in)`; no gradient for `W`.
    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let back = FrozenMatmul { weight: self.weight.clone(), transposed: !self.transposed };
        let gx = grad_res.contiguous()?.apply_op1_no_bwd(&back)?;
        Ok(Some(gx.reshape(arg.shape())?))
    }
}

/// Whether the op's CUDA path applies: `x` on the GPU (f32 or bf16) and a dense weight of its
/// dtype on the same device.
pub fn gpu_ok(x: &Tensor, weight: &FrozenWeight) -> bool {
    match weight {
        FrozenWeight::Dense(w) => super::cpu_util::cuda_ok(x) && w.dtype() == x.dtype() && w.device().same_device(x.device()) && w.is_contiguous(),
        _ => false,
    }
}

/// `x: (..., d_in) · weight: (d_out, d_in)ᵀ -> (..., d_out)`, gradient only for `x`.
///
/// On the CPU it runs the gemm directly, on the GPU cuBLAS; elsewhere (a weight of another dtype
/// or device) it falls back to a matmul against a detached weight (which candle then still
/// differentiates for the weight, at a cost but correctly).
pub fn frozen_matmul(x: &Tensor, weight: &Tensor) -> candle_core::Result<Tensor> {
    frozen_weight_matmul(x, &FrozenWeight::Dense(weight.clone()))
}

/// [`frozen_matmul`] over a dense or packed frozen weight.
pub fn frozen_weight_matmul(x: &Tensor, weight: &FrozenWeight) -> candle_core::Result<Tensor> {
    if (x.device().is_cpu() && x.dtype() != DType::U32) || gpu_ok(x, weight) {
        x.contiguous()?.apply_op1(FrozenMatmul { weight: weight.clone(), transposed: false })
    } else {
        let w = weight.to_dense()?.to_device(x.device())?;
        x.broadcast_matmul(&w.detach().t()?)
    }
}

/// `g: (..., d_out) · weight: (d_out, d_in) -> (..., d_in)` outside the autograd graph (the input
/// gradient of a frozen linear layer).
pub fn frozen_matmul_t(g: &Tensor, weight: &FrozenWeight) -> candle_core::Result<Tensor> {
    if g.device().is_cpu() || gpu_ok(g, weight) {
        g.contiguous()?.apply_op1_no_bwd(&FrozenMatmul { weight: weight.clone(), transposed: true })
    } else {
        let w = weight.to_dense()?.to_device(g.device())?;
        g.detach().broadcast_matmul(&w.detach())
    }
}
