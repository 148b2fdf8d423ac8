#pragma once
// Host/device annotations shared by the CPU (g++) and CUDA (nvcc) builds of the common headers.
#if defined(__CUDACC__) || defined(__HIPCC__)
#define CB_HD __host__ __device__ __forceinline__
#else
#define CB_HD inline
#endif

// An FFT pass (fused.h fft_pass): inlined into each transform's call site, as CB_HD does, unless
// the build sets COMPACT_BILINEAR_OUTLINE_FFT_PASSES=1 (setup.py), which keeps one out-of-line copy
// per template instance: float's kernels then compiled in 12 s instead of 67 (58k SASS instructions
// instead of 132k), a quick build for development, but its kernels run 9-18 % slower (H100, run 10:
// calls spill the caller's live registers, 0.58M local loads per canonical forward instead of none).
#if (defined(__CUDACC__) || defined(__HIPCC__)) && defined(COMPACT_BILINEAR_OUTLINE_FFT_PASSES)
#define CB_HD_PASS __host__ __device__ __noinline__
#else
#define CB_HD_PASS CB_HD
#endif

// Fully unrolled loop over a compile-time count (register arrays stay in registers on the GPU).
#if defined(__CUDACC__) || defined(__HIPCC__)
#define CB_UNROLL _Pragma("unroll")
#else
#define CB_UNROLL _Pragma("GCC unroll 8")
#endif

namespace compact_bilinear {
// Inputs per call. Fixed so per-input pointers fit in a kernel argument struct.
constexpr int kMaxInputs = 8;
}  // namespace compact_bilinear
