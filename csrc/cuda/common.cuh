// Shared by the CUDA kernels: the block-wide sum and the per-sample [B] tensors in double on the data's device.
#pragma once
#include <ATen/ATen.h>

namespace mcm_fast {

// The sum of v over a block of kBlockThreads threads (a multiple of 32), returned to every thread, added in
// the same order every time (deterministic).
template <int kBlockThreads, typename acc_t>
__device__ __forceinline__ acc_t block_sum(acc_t v) {
  __shared__ acc_t warp_sums[kBlockThreads / 32];
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffff, v, offset);
  if (threadIdx.x % 32 == 0) warp_sums[threadIdx.x / 32] = v;
  __syncthreads();
  acc_t total = 0;
  for (int w = 0; w < kBlockThreads / 32; ++w) total += warp_sums[w];
  return total;
}

inline at::Tensor as_double(const at::Tensor& v, const at::Tensor& like) {
  return v.to(like.device(), at::kDouble).contiguous();
}

}  // namespace mcm_fast
