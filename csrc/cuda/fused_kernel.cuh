#pragma once
// The fused kernel (common/fused.h on a CUDA block) and its launch, included by two files per input
// dtype (fused_f32_backward.cu, fused_f32_forward.cu, ...), which instantiate the launches of its
// six phases between them with CB_INSTANTIATE_FUSED_PHASE: the kernels then compile in parallel,
// one file per core.
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <cooperative_groups.h>

#include <algorithm>
#include <map>
#include <mutex>
#include <tuple>
#include <utility>

#include "cuda/fused_launch.h"

namespace compact_bilinear {
namespace fused_detail {

// A CUDA block as the pipeline's thread group: one butterfly of the FFT's largest radix per
// thread, up to 512 threads. Two blocks per SM are the design point at d = 8192 (102 KB of shared
// memory each), which caps the registers: with radix-8 passes 512 threads of 64 registers, with
// radix-32 passes 256 threads of 128 (launch bounds of 512 threads and one block per SM allow 128
// registers; at d = 16384 a block has 512 threads, and shared memory allows one per SM anyway).
// UnitProduct: whether the product phases fused with the unit passes (fused.h unit_product) are
// compiled in; not in the kernels with slots in global memory, whose plans never have them (in
// their radix-8 backward the dead code took 8 bytes of spills).
template <int MaxPassBits, bool UnitProduct = true>
struct BlockGroup {
  static constexpr int kMaxPassBits = MaxPassBits;
  static constexpr bool kUnitProduct = UnitProduct;
  static constexpr int kMinBlocksPerSM = fused::min_blocks_per_sm(MaxPassBits);
  template <class F>
  __device__ __forceinline__ void for_each(int64_t n, F&& f) const {
    // 32-bit loop: every n is below 2^31 (fused_unsupported_reason bounds the channel counts).
    const int m = static_cast<int>(n);
    for (int i = threadIdx.x; i < m; i += blockDim.x) f(i);
  }
  __device__ __forceinline__ void sync() const { __syncthreads(); }
  // *word = max(*word, v) in shared memory, for the calling threads (fused.h Balance): a reduction
  // over the warp's threads that call it together (sm_80 on), one atomic each. Seen after sync().
  static __device__ __forceinline__ void max_into(int* word, int v) {
#if __CUDA_ARCH__ >= 800
    const unsigned active = __activemask();  // any subset of the warp: each takes its own maximum
    const int m = __reduce_max_sync(active, v);
    if ((threadIdx.x & 31) == __ffs(active) - 1) atomicMax(word, m);
#else
    atomicMax(word, v);
#endif
  }
  // Whether this block is the last of n to arrive at *counter (fused.h sum_chunks). The pattern of
  // cooperative groups' grid barrier: the block's threads meet at a barrier, thread 0 fences (a
  // release of every write the barrier ordered before it, fences being cumulative), counts the
  // block in and, in the last block, fences again before the block's threads, past a second
  // barrier, read the others' writes (with load_l2).
  __device__ __forceinline__ bool last_to_arrive(int* counter, int n) const {
    __syncthreads();
    int last = 0;
    if (threadIdx.x == 0) {
      __threadfence();
      last = atomicAdd(counter, 1) == n - 1;
      if (last) __threadfence();
    }
    return __syncthreads_or(last);
  }
};

// The values of the cluster's rows that its blocks read together (fused.h stage_cluster_rows): block
// r reads slice r of them and writes each value into the shared memory of the block whose row it
// is, the gradient's into its first slot, the maps' into its prefetch buffer. The first cluster
// barrier makes sure every block of the cluster has started (its shared memory exists), the second
// that all rows are in place before any is read and that no block writes into another's shared
// memory after it, so blocks may end whenever they are done. Compiled for an earlier architecture
// (which plans no clusters, DeviceLimits), a block stages its own row.
template <typename T, typename In, class G>
__device__ __forceinline__ void stage_cluster_rows(const G& g, const fused::Args<T, In>& a, int64_t i,
                                                   fused::cplx<T>* z, fused::cplx<T>* slots) {
  T* const grad = reinterpret_cast<T*>(slots);
  fused::PrefetchWord<In>* const x = fused::prefetch_buffer(a, z);
#if __CUDA_ARCH__ >= 900
  namespace cg = cooperative_groups;
  const cg::cluster_group cluster = cg::this_cluster();
  const int r = static_cast<int>(cluster.block_rank());
  // Every block has started; no memory to order yet, so the arrival is relaxed (cluster.sync()'s
  // release fence compiles to a GPU-wide MEMBAR, SASS sm_90).
  asm volatile("barrier.cluster.arrive.relaxed.aligned;\n\tbarrier.cluster.wait.aligned;" ::: "memory");
  fused::stage_cluster_rows(g, a, z, i - r, a.cluster, r, a.cluster,
                            [=](int k) { return cg::this_cluster().map_shared_rank(grad, k); },
                            [=](int k) { return cg::this_cluster().map_shared_rank(x, k); });
  cluster.sync();
#else
  fused::stage_cluster_rows(g, a, z, i, 1, 0, 1, [=](int) { return grad; }, [=](int) { return x; });
  g.sync();
#endif
}

// The two maps' gradients of the cluster's rows (fused.h write_cluster_rows), each block's in its
// gradient slot: block r writes slice r of their channels for all the cluster's rows. The first
// cluster barrier makes every block's values visible to the others (a release and an acquire at
// cluster scope), the second keeps each block's shared memory until the others have read it
// (their loads have returned: the stores used them; relaxed). Before sm_90 a block writes its own.
template <typename T, typename In, class G>
__device__ __forceinline__ void write_cluster_rows(const G& g, const fused::Args<T, In>& a, int64_t i,
                                                   fused::cplx<T>* z, fused::cplx<T>* slots) {
  T* const grad = reinterpret_cast<T*>(slots);
#if __CUDA_ARCH__ >= 900
  namespace cg = cooperative_groups;
  const cg::cluster_group cluster = cg::this_cluster();
  const int r = static_cast<int>(cluster.block_rank());
  cluster.sync();
  fused::write_cluster_rows(g, a, z, i - r, a.cluster, r, a.cluster,
                            [=](int k) { return cg::this_cluster().map_shared_rank(grad, k); });
  asm volatile("barrier.cluster.arrive.relaxed.aligned;\n\tbarrier.cluster.wait.aligned;" ::: "memory");
#else
  fused::write_cluster_rows(g, a, z, i, 1, 0, 1, [=](int) { return grad; });
#endif
}

// One block per thread group, its slots in shared memory after Z; or as many blocks as run at
// once, taking the groups in turn: where the plan keeps the slots in global memory (GlobalSlots),
// each with its own in `workspace`, and in the prefetching forward, whose blocks then prefetch
// the first gather of the group they take next (fused.h Turn).
template <typename T, typename In, fused::Phase Ph, int MaxPassBits, bool GlobalSlots>
__global__ void __launch_bounds__(fused::kMaxGroupThreads, BlockGroup<MaxPassBits>::kMinBlocksPerSM)
    fused_kernel(const fused::Args<T, In> a, int64_t ny, int64_t groups, fused::cplx<T>* workspace) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  auto* z = reinterpret_cast<fused::cplx<T>*>(smem_raw) + fused::kCodeValues;  // the codes first (fused.h zi)
  const BlockGroup<MaxPassBits, !GlobalSlots> g;
  if constexpr (GlobalSlots || fused::in_turn(Ph)) {
    fused::cplx<T>* slots = GlobalSlots ? workspace + blockIdx.x * a.slots * a.F : z + fused::z_size(a.d);
    for (int64_t i = blockIdx.x; i < groups; i += gridDim.x) {
      const int64_t next = i + gridDim.x;
      fused::run_phase(g, a, Ph, z, slots, i / ny, i % ny,
                       fused::Turn{next < groups ? next / ny : -1, next % ny, i == blockIdx.x});
      g.sync();  // Z and the slots are the next group's
    }
  } else {
    const int64_t i = blockIdx.x;
    fused::cplx<T>* slots = z + fused::z_size(a.d);
    if constexpr (Ph == fused::Phase::Backward) {
      if (a.stage_grad || a.stage_x) stage_cluster_rows(g, a, i, z, slots);
    }
    // Where the backward has clusters the grid is whole ones: a block past the last group runs none
    // but meets its cluster's barriers. One call site: the phase is inlined once.
    if (i < groups) fused::run_phase(g, a, Ph, z, slots, i / ny, i % ny);
    if constexpr (Ph == fused::Phase::Backward) {
      if (a.stage_dx) {
        g.sync();  // the row's gradients are in its slot, Z free
        write_cluster_rows(g, a, i, z, slots);
      }
    }
  }
}

// A launch of `blocks` blocks of `threads` threads and `smem` bytes of dynamic shared memory on
// the current stream, in clusters of `cluster` blocks (1: none; *attr holds the attribute).
inline cudaLaunchConfig_t launch_config(int64_t blocks, int threads, int64_t smem, int cluster,
                                        cudaLaunchAttribute* attr) {
  cudaLaunchConfig_t config = {};
  config.gridDim = dim3(static_cast<unsigned>(blocks));
  config.blockDim = dim3(static_cast<unsigned>(threads));
  config.dynamicSmemBytes = static_cast<size_t>(smem);
  config.stream = c10::cuda::getCurrentCUDAStream();
  if (cluster > 1) {
    attr->id = cudaLaunchAttributeClusterDimension;
    attr->val.clusterDim.x = static_cast<unsigned>(cluster);
    attr->val.clusterDim.y = 1;
    attr->val.clusterDim.z = 1;
    config.attrs = attr;
    config.numAttrs = 1;
  }
  return config;
}

// What the occupancy API says of `kernel` with `threads` threads and `smem` bytes of dynamic
// shared memory on the current device: the blocks it runs at once (per SM times the SM count), and
// whether clusters of `cluster` blocks (> 1) fit at all (with their shared memory they need SMs
// enough in one GPC, which a partitioned, MIG, device may not have). The kernel's shared-memory
// limit is first raised to `smem` where it is lower. The runtime calls happen once per kernel,
// device, size and cluster, not on every launch: their answers do not change, and each costs host
// time that a small call waits on. The limit only ever rises, so every size cached so far stays
// launchable.
struct Occupancy {
  int64_t blocks;
  bool clusters_fit;
};
template <class Kernel>
Occupancy occupancy(Kernel kernel, int threads, int64_t smem, int cluster) {
  static std::mutex mu;
  static std::map<std::tuple<const void*, int, int, int64_t, int>, Occupancy> cache;
  static std::map<std::pair<const void*, int>, int64_t> limit;  // the attribute as set so far
  const int device = c10::cuda::current_device();
  const void* k = reinterpret_cast<const void*>(kernel);
  const auto key = std::make_tuple(k, device, threads, smem, cluster);
  std::lock_guard<std::mutex> lock(mu);
  const auto it = cache.find(key);
  if (it != cache.end()) return it->second;
  int64_t& lim = limit.emplace(std::make_pair(k, device), 48 * 1024).first->second;
  if (smem > lim) {  // before the occupancy queries too
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
    lim = smem;
  }
  int per_sm = 0, sms = 0, clusters = 0;
  C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, static_cast<size_t>(smem)));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  if (cluster > 1) {
    cudaLaunchAttribute attr;
    const cudaLaunchConfig_t config = launch_config(cluster, threads, smem, cluster, &attr);
    if (cudaOccupancyMaxActiveClusters(&clusters, kernel, &config) != cudaSuccess) {
      (void)cudaGetLastError();  // not an error of this call: the blocks then read their own rows
      clusters = 0;
    }
  }
  return cache[key] = Occupancy{static_cast<int64_t>(sms) * std::max(per_sm, 1), clusters > 0};
}

}  // namespace fused_detail

template <typename T, typename In, fused::Phase Ph>
void launch_phase(int64_t groups, int64_t ny, int64_t smem, const fused::Args<T, In>& a) {
  fused::with_max_pass_bits(a.max_pass_bits, [&](auto bits) {
    constexpr int kBits = decltype(bits)::value;
    const int threads = fused::group_threads(a.d, kBits);
    // One block per thread group, or (in_turn) as many as run at once, by the occupancy API; the
    // backward whose rows clusters read (a.cluster) in clusters, the grid rounded up to whole ones,
    // where they fit on this device, else with each block reading its own row where it lies.
    const auto launch = [&](auto kernel, bool in_turn) {
      const int want = in_turn ? 0 : a.cluster;
      const fused_detail::Occupancy occ = fused_detail::occupancy(kernel, threads, smem, want);
      fused::Args<T, In> args = a;
      if (!(want > 1 && occ.clusters_fit)) {
        args.cluster = 0;
        args.stage_grad = args.stage_x = args.stage_dx = false;
      }
      const int q = std::max(args.cluster, 1);
      const int64_t blocks = in_turn ? std::min(groups, occ.blocks) : (groups + q - 1) / q * q;
      // Slots in global memory: a.slots half spectra for each block, freed after the kernel, in
      // stream order, by the caching allocator.
      const c10::DataPtr workspace =
          a.global_slots ? c10::cuda::CUDACachingAllocator::get()->allocate(
                               static_cast<size_t>(blocks * a.slots * a.F) * sizeof(fused::cplx<T>))
                         : c10::DataPtr();
      cudaLaunchAttribute cluster;
      const cudaLaunchConfig_t config = fused_detail::launch_config(blocks, threads, smem, q, &cluster);
      C10_CUDA_CHECK(cudaLaunchKernelEx(&config, kernel, args, ny, groups,
                                        static_cast<fused::cplx<T>*>(workspace.get())));
    };
    // Slots in global memory: compiled for the two phases that have slots, with radix-8 passes
    // (cbp.cpp fused_plan; no prefetch buffer beside them) and without unit products (BlockGroup).
    if constexpr (kBits == 3 && (Ph == fused::Phase::Forward || Ph == fused::Phase::Backward)) {
      TORCH_CHECK(!(a.global_slots && a.unit_product),
                  "compact_bilinear: the fused kernels with slots in global memory have no unit products");
      if (a.global_slots) return launch(fused_detail::fused_kernel<T, In, Ph, kBits, true>, true);
    }
    TORCH_CHECK(!a.global_slots, "compact_bilinear: no fused kernel keeps its slots in global memory with FFT passes of ",
                kBits, " stages");
    launch(fused_detail::fused_kernel<T, In, Ph, kBits, false>, fused::in_turn(Ph));
  });
}

}  // namespace compact_bilinear

// The launch of phase Ph for input dtype In, inside namespace compact_bilinear: the backward's in
// fused_<dtype>_backward.cu, the other five phases' (CB_INSTANTIATE_FUSED_FORWARD) in
// fused_<dtype>_forward.cu.
#define CB_INSTANTIATE_FUSED_PHASE(In, Ph)                             \
  template void launch_phase<fused::acc_t<In>, In, fused::Phase::Ph>( \
      int64_t, int64_t, int64_t, const fused::Args<fused::acc_t<In>, In>&);
#define CB_INSTANTIATE_FUSED_FORWARD(In)                \
  CB_INSTANTIATE_FUSED_PHASE(In, VectorSpectra)         \
  CB_INSTANTIATE_FUSED_PHASE(In, Forward)               \
  CB_INSTANTIATE_FUSED_PHASE(In, ForwardPrefetch)       \
  CB_INSTANTIATE_FUSED_PHASE(In, ForwardOneMapPrefetch) \
  CB_INSTANTIATE_FUSED_PHASE(In, ForwardPooledPrefetch)
