#pragma once
// Host/device annotations shared by the CPU (g++) and CUDA (nvcc) builds of the common headers.
#if defined(__CUDACC__) || defined(__HIPCC__)
#define CB_HD __host__ __device__ __forceinline__
#else
#define CB_HD inline
#endif

// An FFT pass (fused.h fft_pass), which the GPU build keeps out of line: one copy of its code for
// every caller with the same template arguments, where CB_HD pasted every pass kind into each
// transform's call site (fused_f32.cu: 132k SASS instructions and 67 s of nvcc, 58k and 12 s out
// of line). COMPACT_BILINEAR_INLINE_FFT_PASSES=1 at build time (setup.py) inlines them again, for
// A/B timings (benchmarks/gpu_check.sh).
#if (defined(__CUDACC__) || defined(__HIPCC__)) && !defined(COMPACT_BILINEAR_INLINE_FFT_PASSES)
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
