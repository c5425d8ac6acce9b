// The MCM target and squared distance (Algorithm 1, steps 6-8): the CUDA kernels of the ops defined in
// csrc/mcm_loss.cpp.
//
// Each block owns kChunk elements of one sample and computes that sample's target coefficients itself from
// the logSNRs on the device (target_coefs in ddim.h): no host sync, so the ops can be captured in a CUDA
// graph; everything runs on the current stream. The distance kernel writes one partial sum per block (and
// diff = x_hat - x_target in the compute dtype when asked); a second kernel adds each sample's partials in a
// fixed order (deterministic, no atomics). Arithmetic in float32 (float64 for float64 data).
#include "../mcm_loss.h"
#include "common.cuh"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <tuple>

namespace mcm_fast {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kChunk = 4096;  // elements of one sample per block

struct Chunk {
  int64_t b, lo, hi;  // sample, and the block's element range in the flat [B * d] tensor
};

__device__ __forceinline__ Chunk block_chunk(int64_t d, int64_t chunks) {
  const int64_t b = blockIdx.x / chunks;
  const int64_t lo = b * d + (blockIdx.x % chunks) * kChunk;
  return {b, lo, min(lo + kChunk, (b + 1) * d)};
}

template <typename scalar_t, typename acc_t>
__device__ __forceinline__ acc_t target_at(const scalar_t* x_ref, const scalar_t* z_s, const scalar_t* z_t,
                                           int64_t j, const TargetCoefs& c) {
  const acc_t rest = static_cast<acc_t>(c.b) * static_cast<acc_t>(z_s[j]) +
                     static_cast<acc_t>(c.c) * static_cast<acc_t>(z_t[j]);
  return c.a != 0.0 ? static_cast<acc_t>(c.a) * static_cast<acc_t>(x_ref[j]) + rest : rest;  // a = 0: s = t_step
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    target_kernel(const scalar_t* __restrict__ x_ref, const scalar_t* __restrict__ z_s,
                  const scalar_t* __restrict__ z_t, scalar_t* __restrict__ out,
                  const double* __restrict__ logsnr_t, const double* __restrict__ logsnr_s,
                  const double* __restrict__ logsnr_step, int64_t d, int64_t chunks) {
  using acc_t = at::opmath_type<scalar_t>;
  const Chunk k = block_chunk(d, chunks);
  const TargetCoefs c = target_coefs(logsnr_t[k.b], logsnr_s[k.b], logsnr_step[k.b]);
  for (int64_t j = k.lo + threadIdx.x; j < k.hi; j += blockDim.x)
    out[j] = static_cast<scalar_t>(target_at<scalar_t, acc_t>(x_ref, z_s, z_t, j, c));
}

// partials[block] = sum over the block's chunk of (x_hat - x_target)^2; x_target read from `a`, or with
// kFused computed from x_ref = `a`, z_s and z_t; diff written where non-null.
template <typename scalar_t, bool kFused>
__global__ void __launch_bounds__(kThreads)
    sqdist_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ a,
                  const scalar_t* __restrict__ z_s, const scalar_t* __restrict__ z_t,
                  const double* __restrict__ logsnr_t, const double* __restrict__ logsnr_s,
                  const double* __restrict__ logsnr_step, at::opmath_type<scalar_t>* __restrict__ diff,
                  at::opmath_type<scalar_t>* __restrict__ partials, int64_t d, int64_t chunks) {
  using acc_t = at::opmath_type<scalar_t>;
  const Chunk k = block_chunk(d, chunks);
  TargetCoefs c{0.0, 0.0, 0.0};
  if constexpr (kFused) c = target_coefs(logsnr_t[k.b], logsnr_s[k.b], logsnr_step[k.b]);
  acc_t acc = 0;
  for (int64_t j = k.lo + threadIdx.x; j < k.hi; j += blockDim.x) {
    acc_t target;
    if constexpr (kFused) {
      target = target_at<scalar_t, acc_t>(a, z_s, z_t, j, c);
    } else {
      target = static_cast<acc_t>(a[j]);
    }
    const acc_t e = static_cast<acc_t>(x[j]) - target;
    if (diff != nullptr) diff[j] = e;
    acc += e * e;
  }
  const acc_t total = block_sum<kThreads>(acc);
  if (threadIdx.x == 0) partials[blockIdx.x] = total;
}

// dist[b] = the sum of sample b's partials in chunk order, in double.
template <typename acc_t>
__global__ void __launch_bounds__(kThreads)
    sum_partials_kernel(const acc_t* __restrict__ partials, acc_t* __restrict__ dist, int64_t B,
                        int64_t chunks) {
  const int64_t b = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (b >= B) return;
  double total = 0.0;
  for (int64_t k = 0; k < chunks; ++k) total += static_cast<double>(partials[b * chunks + k]);
  dist[b] = static_cast<acc_t>(total);
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    scale_rows_kernel(const at::opmath_type<scalar_t>* __restrict__ diff,
                      const double* __restrict__ grad, scalar_t* __restrict__ out, int64_t d,
                      int64_t chunks) {
  using acc_t = at::opmath_type<scalar_t>;
  const Chunk k = block_chunk(d, chunks);
  const acc_t scale = static_cast<acc_t>(2.0 * grad[k.b]);
  for (int64_t j = k.lo + threadIdx.x; j < k.hi; j += blockDim.x) out[j] = static_cast<scalar_t>(scale * diff[j]);
}


at::Tensor mcm_target_cuda(const at::Tensor& x_ref, const at::Tensor& z_s, const at::Tensor& z_t,
                           const at::Tensor& logsnr_t, const at::Tensor& logsnr_s, const at::Tensor& logsnr_step) {
  const int64_t B = check_target_args(x_ref, z_s, z_t, logsnr_t, logsnr_s, logsnr_step);
  const c10::cuda::CUDAGuard guard(x_ref.device());
  const auto xr = x_ref.contiguous(), zs = z_s.contiguous(), zt = z_t.contiguous();
  auto out = at::empty_like(xr, at::MemoryFormat::Contiguous);
  if (xr.numel() == 0) return out;
  const auto lt = as_double(logsnr_t, xr), ls = as_double(logsnr_s, xr), lq = as_double(logsnr_step, xr);
  const int64_t d = xr.numel() / B, chunks = (d + kChunk - 1) / kChunk;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, xr.scalar_type(), "mcm_target_cuda", [&] {
    target_kernel<scalar_t><<<B * chunks, kThreads, 0, stream>>>(
        xr.data_ptr<scalar_t>(), zs.data_ptr<scalar_t>(), zt.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(),
        lt.data_ptr<double>(), ls.data_ptr<double>(), lq.data_ptr<double>(), d, chunks);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

// Shared by both distance ops: the fused one passes z_s, z_t and the logSNRs, the other only `target`.
std::tuple<at::Tensor, at::Tensor> sqdist_cuda(const at::Tensor& x_hat, const at::Tensor& target,
                                               const at::Tensor* z_s, const at::Tensor* z_t,
                                               const at::Tensor* logsnr_t, const at::Tensor* logsnr_s,
                                               const at::Tensor* logsnr_step, bool save_diff) {
  const int64_t B = x_hat.size(0);
  const c10::cuda::CUDAGuard guard(x_hat.device());
  const auto compute = x_hat.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const auto x = x_hat.contiguous(), a = target.contiguous();
  auto diff = save_diff ? at::empty(x.sizes(), x.options().dtype(compute)) : at::empty({0}, x.options());
  auto dist = at::zeros({B}, x.options().dtype(compute));
  if (x.numel() == 0) return {dist, diff};
  const bool fused = z_s != nullptr;
  const auto zs = fused ? z_s->contiguous() : at::Tensor(), zt = fused ? z_t->contiguous() : at::Tensor();
  const auto lt = fused ? as_double(*logsnr_t, x) : at::Tensor(), ls = fused ? as_double(*logsnr_s, x) : at::Tensor();
  const auto lq = fused ? as_double(*logsnr_step, x) : at::Tensor();
  const int64_t d = x.numel() / B, chunks = (d + kChunk - 1) / kChunk;
  auto partials = at::empty({B * chunks}, x.options().dtype(compute));
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "mcm_sqdist_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    acc_t* dp = save_diff ? diff.data_ptr<acc_t>() : nullptr;
    if (fused) {
      sqdist_kernel<scalar_t, true><<<B * chunks, kThreads, 0, stream>>>(
          x.data_ptr<scalar_t>(), a.data_ptr<scalar_t>(), zs.data_ptr<scalar_t>(), zt.data_ptr<scalar_t>(),
          lt.data_ptr<double>(), ls.data_ptr<double>(), lq.data_ptr<double>(), dp, partials.data_ptr<acc_t>(), d,
          chunks);
    } else {
      sqdist_kernel<scalar_t, false><<<B * chunks, kThreads, 0, stream>>>(
          x.data_ptr<scalar_t>(), a.data_ptr<scalar_t>(), nullptr, nullptr, nullptr, nullptr, nullptr, dp,
          partials.data_ptr<acc_t>(), d, chunks);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    sum_partials_kernel<acc_t><<<(B + kThreads - 1) / kThreads, kThreads, 0, stream>>>(
        partials.data_ptr<acc_t>(), dist.data_ptr<acc_t>(), B, chunks);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {dist, diff};
}

std::tuple<at::Tensor, at::Tensor> mcm_sqdist_cuda(const at::Tensor& x_hat, const at::Tensor& target,
                                                   bool save_diff) {
  check_batch("x_hat", x_hat);
  check_like("target", target, "x_hat", x_hat);
  return sqdist_cuda(x_hat, target, nullptr, nullptr, nullptr, nullptr, nullptr, save_diff);
}

std::tuple<at::Tensor, at::Tensor> mcm_target_sqdist_cuda(const at::Tensor& x_hat, const at::Tensor& x_ref,
                                                          const at::Tensor& z_s, const at::Tensor& z_t,
                                                          const at::Tensor& logsnr_t, const at::Tensor& logsnr_s,
                                                          const at::Tensor& logsnr_step, bool save_diff) {
  check_target_args(x_ref, z_s, z_t, logsnr_t, logsnr_s, logsnr_step);
  check_like("x_hat", x_hat, "x_ref", x_ref);
  return sqdist_cuda(x_hat, x_ref, &z_s, &z_t, &logsnr_t, &logsnr_s, &logsnr_step, save_diff);
}

at::Tensor mcm_sqdist_backward_cuda(const at::Tensor& diff, const at::Tensor& grad_dist_sq, at::ScalarType dtype) {
  const int64_t B = check_batch("diff", diff);
  check_per_sample("grad_dist_sq", grad_dist_sq, B);
  const c10::cuda::CUDAGuard guard(diff.device());
  const auto dd = diff.contiguous();
  auto out = at::empty(dd.sizes(), dd.options().dtype(dtype));
  if (dd.numel() == 0) return out;
  const auto g = as_double(grad_dist_sq, dd);
  const int64_t d = dd.numel() / B, chunks = (d + kChunk - 1) / kChunk;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "mcm_sqdist_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    TORCH_CHECK(dd.scalar_type() == c10::CppTypeToScalarType<acc_t>::value, "diff: expected dtype ",
                c10::CppTypeToScalarType<acc_t>::value, " (the compute dtype of ", dtype, "), got ", dd.scalar_type());
    scale_rows_kernel<scalar_t><<<B * chunks, kThreads, 0, stream>>>(dd.data_ptr<acc_t>(), g.data_ptr<double>(),
                                                                     out.data_ptr<scalar_t>(), d, chunks);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(mcm_fast, CUDA, m) {
  m.impl("mcm_target_native", &mcm_target_cuda);
  m.impl("mcm_sqdist_native", &mcm_sqdist_cuda);
  m.impl("mcm_target_sqdist_native", &mcm_target_sqdist_cuda);
  m.impl("mcm_sqdist_backward_native", &mcm_sqdist_backward_cuda);
}

}  // namespace mcm_fast
