//! glibc allocator settings for training and inference processes.

/// One malloc arena (buffers allocated on worker threads and freed on the main thread otherwise
/// pile up in per-thread arenas: 5.5 GB instead of 3 GB peak for the bench step), large blocks
/// from the heap, and no trimming: freed memory stays mapped for the next step instead of being
/// handed back and faulted in (and zeroed by the kernel) afresh. With a 256 MiB trim threshold a
/// training step still spent 22 % of its time in the kernel's `clear_page`; without trimming 5 %
/// (the first step's faults), and the step runs about 30 % faster for 7 % more peak RSS.
/// Call before any threads start. A no-op off glibc.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator thresholds; called before any threads start.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
        // Large blocks (the logits and their gradient) come from the heap and are reused instead
        // of being mapped and faulted in afresh every step.
        libc::mallopt(libc::M_MMAP_MAX, 0);
        // -1 disables trimming (mallopt(3)); the heap keeps its peak size until the process ends.
        libc::mallopt(libc::M_TRIM_THRESHOLD, -1);
    }
}

/// The GPU counterpart: candle allocates CUDA memory stream-ordered from the device's default
/// pool, which by default hands freed memory back to the driver at every synchronisation (each
/// training step reads its loss), so the next step maps it afresh. A release threshold of
/// "never" keeps it in the pool for reuse, as PyTorch's caching allocator does. A no-op for
/// other devices and in builds without CUDA.
pub fn tune_gpu_allocator(device: &candle_core::Device) -> candle_core::Result<()> {
    #[cfg(feature = "cuda")]
    if let candle_core::Device::Cuda(dev) = device {
        use candle_core::cuda_backend::cudarc::driver::sys;
        let stream = dev.cuda_stream();
        let ctx = stream.context();
        let fail = |what: &str, r: sys::CUresult| candle_core::Error::Msg(format!("setting up the GPU memory pool: {what}: {r:?}"));
        ctx.bind_to_thread().map_err(|e| candle_core::Error::Msg(format!("setting up the GPU memory pool: {e}")))?;
        let mut pool = std::mem::MaybeUninit::<sys::CUmemoryPool>::uninit();
        // SAFETY: the device handle comes from a live context; the attribute takes a u64.
        unsafe {
            let r = sys::cuDeviceGetDefaultMemPool(pool.as_mut_ptr(), ctx.cu_device());
            if r != sys::CUresult::CUDA_SUCCESS {
                return Err(fail("cuDeviceGetDefaultMemPool", r));
            }
            let mut threshold = u64::MAX;
            let r = sys::cuMemPoolSetAttribute(
                pool.assume_init(),
                sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
                &mut threshold as *mut u64 as *mut std::ffi::c_void,
            );
            if r != sys::CUresult::CUDA_SUCCESS {
                return Err(fail("cuMemPoolSetAttribute", r));
            }
        }
    }
    let _ = device;
    Ok(())
}
