#pragma once
// Host/device annotations shared by the CPU (g++) and CUDA (nvcc) builds of the common headers.
#if defined(__CUDACC__) || defined(__HIPCC__)
#define CB_HD __host__ __device__ __forceinline__
#else
#define CB_HD inline
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
