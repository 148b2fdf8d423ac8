#pragma once
// The launch of one phase of the fused kernel. Its kernels are compiled in two files per input dtype
// (fused_<dtype>_backward.cu and fused_<dtype>_forward.cu, both from fused_kernel.cuh), so the
// build runs them in parallel; cbp_kernel.cu only calls them.
#include "common/fused_phases.h"

namespace compact_bilinear {

// Thread groups i < groups, each handling (i / ny, i % ny): a block each, or, where a.global_slots
// and in the prefetching forward, as many blocks as run at once taking them in turn, with global
// slots each block with a.slots half spectra of its own in a workspace.
template <typename T, typename In, fused::Phase Ph>
void launch_phase(int64_t groups, int64_t ny, int64_t smem, const fused::Args<T, In>& a);

}  // namespace compact_bilinear
