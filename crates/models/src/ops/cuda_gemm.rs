//! Row-major matrix products on the GPU through cuBLAS, for the fused ops' CUDA paths: batched,
//! with either operand read transposed, scaled (`alpha`) and accumulated (`beta`), so that an op
//! can write a product into part of a buffer it owns, or add one into another, without the
//! temporaries and the weight gradients of candle's `matmul`.
//!
//! cuBLAS is column-major; a row-major `C (m, n) = A (m, k) · B (k, n)` is the column-major
//! `Cᵀ (n, m) = Bᵀ · Aᵀ`, so the call passes B first. f32 products use TF32 when candle's
//! `gemm_reduced_precision_f32` is set (`--tf32`), bf16 products accumulate in f32.
use candle_core::cuda_backend::cudarc::cublas::{result as blas, sys};
use candle_core::cuda_backend::cudarc::driver::{DevicePtr, DevicePtrMut};
use candle_core::cuda_backend::CudaDevice;
use candle_core::Result;
use half::bf16;

/// The element types the products take.
pub trait GemmFloat: candle_core::cuda_backend::cudarc::driver::DeviceRepr {
    const DATA: sys::cudaDataType;
    fn compute() -> sys::cublasComputeType_t;
}

impl GemmFloat for f32 {
    const DATA: sys::cudaDataType = sys::cudaDataType::CUDA_R_32F;
    fn compute() -> sys::cublasComputeType_t {
        if candle_core::cuda_backend::gemm_reduced_precision_f32() {
            sys::cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_TF32
        } else {
            sys::cublasComputeType_t::CUBLAS_COMPUTE_32F
        }
    }
}

impl GemmFloat for bf16 {
    const DATA: sys::cudaDataType = sys::cudaDataType::CUDA_R_16BF;
    fn compute() -> sys::cublasComputeType_t {
        sys::cublasComputeType_t::CUBLAS_COMPUTE_32F
    }
}

/// `C[i] = alpha · A[i] · B[i] + beta · C[i]` for `i < batch`, every matrix row-major and
/// contiguous: `A[i]: (m, k)` (stored `(k, m)` when `ta`) at element `i · sa` of its buffer,
/// `B[i]: (k, n)` (stored `(n, k)` when `tb`) at `i · sb`, `C[i]: (m, n)` at `i · sc`.
#[derive(Clone, Copy, Debug)]
pub struct Gemm {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub ta: bool,
    pub tb: bool,
    pub batch: usize,
    /// Element strides between the batch's matrices of A, B and C.
    pub strides: (usize, usize, usize),
    pub alpha: f32,
    pub beta: f32,
}

impl Gemm {
    /// One product `C (m, n) = A (m, k) · B (k, n)`, nothing transposed, no accumulation.
    pub fn new(m: usize, n: usize, k: usize) -> Self {
        Self { m, n, k, ta: false, tb: false, batch: 1, strides: (m * k, k * n, m * n), alpha: 1.0, beta: 0.0 }
    }
    /// A read as the transpose of what is stored (`(k, m)` row-major).
    pub fn ta(mut self) -> Self {
        self.ta = true;
        self
    }
    /// B read as the transpose of what is stored (`(n, k)` row-major).
    pub fn tb(mut self) -> Self {
        self.tb = true;
        self
    }
    /// `batch` products, each operand's matrices packed one after the other.
    pub fn batched(mut self, batch: usize) -> Self {
        self.batch = batch;
        self.strides = (self.m * self.k, self.k * self.n, self.m * self.n);
        self
    }
    pub fn alpha(mut self, alpha: f32) -> Self {
        self.alpha = alpha;
        self
    }
    /// Adds into C (`beta = 1`) instead of overwriting it.
    pub fn accumulate(mut self) -> Self {
        self.beta = 1.0;
        self
    }

    /// Elements each operand's buffer must hold.
    fn extents(&self) -> (usize, usize, usize) {
        let last = self.batch.saturating_sub(1);
        (last * self.strides.0 + self.m * self.k, last * self.strides.1 + self.k * self.n, last * self.strides.2 + self.m * self.n)
    }

    /// Runs the product on the device's stream; the buffers are checked to hold every matrix.
    pub fn run<T: GemmFloat, A: DevicePtr<T>, B: DevicePtr<T>, C: DevicePtrMut<T>>(&self, dev: &CudaDevice, a: &A, b: &B, c: &mut C) -> Result<()> {
        let (ea, eb, ec) = self.extents();
        if a.len() < ea || b.len() < eb || c.len() < ec {
            return Err(candle_core::Error::Msg(format!(
                "gpu gemm ({}, {}, {}) x{}: buffers of {}, {}, {} elements, need {ea}, {eb}, {ec}",
                self.m, self.n, self.k, self.batch, a.len(), b.len(), c.len()
            )));
        }
        if self.batch == 0 || self.m == 0 || self.n == 0 {
            return Ok(());
        }
        let int = |v: usize, what: &str| i32::try_from(v).map_err(|_| candle_core::Error::Msg(format!("gpu gemm: {what} = {v} exceeds cuBLAS's 32-bit sizes")));
        let (m, n, k, batch) = (int(self.m, "m")?, int(self.n, "n")?, int(self.k, "k")?, int(self.batch, "batch")?);
        let op = |t: bool| if t { sys::cublasOperation_t::CUBLAS_OP_T } else { sys::cublasOperation_t::CUBLAS_OP_N };
        // Column-major Cᵀ (n, m) = op(B) · op(A): B stored (k, n) row-major is column-major
        // (n, k) with leading dimension n; stored (n, k) it is (k, n) with leading dimension k.
        let ldb = if self.tb { k } else { n };
        let lda = if self.ta { m } else { k };
        let stream = dev.cuda_stream();
        let handle = dev.cublas_handle();
        let (pa, _ga) = a.device_ptr(&stream);
        let (pb, _gb) = b.device_ptr(&stream);
        let (pc, _gc) = c.device_ptr_mut(&stream);
        let (alpha, beta) = (self.alpha, self.beta);
        // SAFETY: every operand's buffer was checked above to hold the batch's matrices at the
        // given strides; the pointers stay valid while their guards live (to the end of scope).
        unsafe {
            blas::gemm_strided_batched_ex(
                *handle.handle(),
                op(self.tb),
                op(self.ta),
                n,
                m,
                k,
                (&alpha) as *const f32 as *const _,
                pb as *const _,
                T::DATA,
                ldb,
                self.strides.1 as i64,
                pa as *const _,
                T::DATA,
                lda,
                self.strides.0 as i64,
                (&beta) as *const f32 as *const _,
                pc as *mut _,
                T::DATA,
                n,
                self.strides.2 as i64,
                batch,
                T::compute(),
                sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(|e| candle_core::Error::Msg(format!("cuBLAS gemm ({}, {}, {}) x{}: {e:?}", self.m, self.n, self.k, self.batch)))
    }
}
