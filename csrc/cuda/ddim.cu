// DDIM and aDDIM updates (math.md §2-3): the CUDA kernels of the ops defined in csrc/ddim.cpp.
//
// Both write z_s = p x_hat + q (z_t - r x_hat) with per-sample p = alpha_s, r = alpha_t, q = sigma_s / sigma_t
// (DDIM) or c / sigma_t (aDDIM). Each block owns kChunk elements of one sample and computes that sample's
// coefficients itself from the logSNRs on the device: no host sync, so the ops can be captured in a CUDA
// graph; everything runs on the current stream. aDDIM on samples of at most kRowMax elements runs one block
// per sample that keeps the sample in registers: one read of x_hat and z_t, one write (not for float64: 32
// doubles a thread need more than the 64 registers a 1024-thread block leaves, and spilled, per the sm_90a table
// of docs/benchmarks.md). Larger samples (and float64) first
// write one partial sum of (z_t - r x_hat)^2 per block, then every block of the update sums its sample's
// partials in the same order (deterministic) and reads x_hat and z_t again.
// Arithmetic in float32 (float64 for float64 data); partial sums in float32 per block, summed in double.
#include "../ddim.h"
#include "common.cuh"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

namespace mcm_fast {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kChunk = 4096;  // elements of one sample per block
constexpr int kRowThreads = 1024, kRowItems = 16;  // aDDIM one block per sample: kRowMax elements in registers
constexpr int64_t kRowMax = kRowThreads * kRowItems;

struct DeviceCoefs {
  double p, q, r, k;  // k = alpha_s - alpha_t sigma_s / sigma_t
};

__device__ __forceinline__ DeviceCoefs ddim_coefs(double logsnr_t, double logsnr_s) {
  const double alpha_t = sqrt(1.0 / (1.0 + exp(-logsnr_t))), sigma_t = sqrt(1.0 / (1.0 + exp(logsnr_t)));
  const double alpha_s = sqrt(1.0 / (1.0 + exp(-logsnr_s))), sigma_s = sqrt(1.0 / (1.0 + exp(logsnr_s)));
  const double q = sigma_s / sigma_t;
  return {alpha_s, q, alpha_t, alpha_s - alpha_t * q};
}

template <typename scalar_t>
__device__ __forceinline__ void write_update(const scalar_t* x, const scalar_t* z, scalar_t* out, int64_t lo,
                                             int64_t hi, double p, double q, double r) {
  using acc_t = at::opmath_type<scalar_t>;
  const acc_t pa = p, qa = q, ra = r;
  for (int64_t j = lo + threadIdx.x; j < hi; j += blockDim.x) {
    const acc_t xj = static_cast<acc_t>(x[j]);
    out[j] = static_cast<scalar_t>(pa * xj + qa * (static_cast<acc_t>(z[j]) - ra * xj));
  }
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    ddim_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ z,
                scalar_t* __restrict__ out, const double* __restrict__ logsnr_t,
                const double* __restrict__ logsnr_s, int64_t d, int64_t chunks) {
  const int64_t b = blockIdx.x / chunks;
  const int64_t lo = b * d + (blockIdx.x % chunks) * kChunk;
  const int64_t hi = min(lo + kChunk, (b + 1) * d);
  const DeviceCoefs c = ddim_coefs(logsnr_t[b], logsnr_s[b]);
  write_update(x, z, out, lo, hi, c.p, c.q, c.r);
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    residual_partials_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ z,
                             const double* __restrict__ logsnr_t, float* __restrict__ partials,
                             int64_t d, int64_t chunks) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t b = blockIdx.x / chunks;
  const int64_t lo = b * d + (blockIdx.x % chunks) * kChunk;
  const int64_t hi = min(lo + kChunk, (b + 1) * d);
  const acc_t r = static_cast<acc_t>(sqrt(1.0 / (1.0 + exp(-logsnr_t[b]))));
  acc_t acc = 0;
  for (int64_t j = lo + threadIdx.x; j < hi; j += blockDim.x) {
    const acc_t e = static_cast<acc_t>(z[j]) - r * static_cast<acc_t>(x[j]);
    acc += e * e;
  }
  const acc_t total = block_sum<kThreads>(acc);
  if (threadIdx.x == 0) partials[blockIdx.x] = static_cast<float>(total);
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    addim_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ z,
                 scalar_t* __restrict__ out, const double* __restrict__ logsnr_t,
                 const double* __restrict__ logsnr_s, const double* __restrict__ x_var,
                 const float* __restrict__ partials, int64_t d, int64_t chunks) {
  const int64_t b = blockIdx.x / chunks;
  const int64_t lo = b * d + (blockIdx.x % chunks) * kChunk;
  const int64_t hi = min(lo + kChunk, (b + 1) * d);
  const DeviceCoefs c = ddim_coefs(logsnr_t[b], logsnr_s[b]);
  double norm_sq = 0.0;  // ||z_t - alpha_t x_hat||^2 = sigma_t^2 ||eps_hat||^2, same order in every block
  for (int64_t k = 0; k < chunks; ++k) norm_sq += partials[b * chunks + k];
  const double extra = x_var[b] > 0.0 ? static_cast<double>(d) * c.k * c.k * x_var[b] / norm_sq : 0.0;
  write_update(x, z, out, lo, hi, c.p, sqrt(c.q * c.q + extra), c.r);
}

template <typename scalar_t>
__global__ void __launch_bounds__(kRowThreads)
    addim_row_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ z, scalar_t* __restrict__ out,
                     const double* __restrict__ logsnr_t, const double* __restrict__ logsnr_s,
                     const double* __restrict__ x_var, int64_t d) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t b = blockIdx.x, base = b * d;
  const DeviceCoefs c = ddim_coefs(logsnr_t[b], logsnr_s[b]);
  const acc_t r = static_cast<acc_t>(c.r);
  acc_t xs[kRowItems], es[kRowItems];  // this thread's elements j = threadIdx.x + i * kRowThreads
  acc_t acc = 0;
#pragma unroll
  for (int i = 0; i < kRowItems; ++i) {
    const int64_t j = threadIdx.x + static_cast<int64_t>(i) * kRowThreads;
    xs[i] = j < d ? static_cast<acc_t>(x[base + j]) : acc_t(0);
    es[i] = j < d ? static_cast<acc_t>(z[base + j]) - r * xs[i] : acc_t(0);  // sigma_t eps_hat
    acc += es[i] * es[i];
  }
  const double norm_sq = static_cast<double>(block_sum<kRowThreads>(acc));
  const double extra = x_var[b] > 0.0 ? static_cast<double>(d) * c.k * c.k * x_var[b] / norm_sq : 0.0;
  const acc_t p = static_cast<acc_t>(c.p), q = static_cast<acc_t>(sqrt(c.q * c.q + extra));
#pragma unroll
  for (int i = 0; i < kRowItems; ++i) {
    const int64_t j = threadIdx.x + static_cast<int64_t>(i) * kRowThreads;
    if (j < d) out[base + j] = static_cast<scalar_t>(p * xs[i] + q * es[i]);
  }
}


at::Tensor ddim_step_cuda(const at::Tensor& x_hat, const at::Tensor& z_t, const at::Tensor& logsnr_t,
                          const at::Tensor& logsnr_s) {
  const int64_t B = check_update_args(x_hat, z_t, logsnr_t, logsnr_s);
  const c10::cuda::CUDAGuard guard(x_hat.device());
  const auto x = x_hat.contiguous(), z = z_t.contiguous();
  auto out = at::empty_like(x, at::MemoryFormat::Contiguous);
  if (x.numel() == 0) return out;
  const auto lt = as_double(logsnr_t, x), ls = as_double(logsnr_s, x);
  const int64_t d = x.numel() / B, chunks = (d + kChunk - 1) / kChunk;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "ddim_step_cuda", [&] {
    ddim_kernel<scalar_t><<<B * chunks, kThreads, 0, stream>>>(
        x.data_ptr<scalar_t>(), z.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), lt.data_ptr<double>(),
        ls.data_ptr<double>(), d, chunks);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor addim_step_cuda(const at::Tensor& x_hat, const at::Tensor& z_t, const at::Tensor& logsnr_t,
                           const at::Tensor& logsnr_s, const at::Tensor& x_var) {
  const int64_t B = check_update_args(x_hat, z_t, logsnr_t, logsnr_s);
  TORCH_CHECK(x_var.dim() == 1 && x_var.size(0) == B, "x_var: expected shape [", B, "], got ", x_var.sizes());
  const c10::cuda::CUDAGuard guard(x_hat.device());
  const auto x = x_hat.contiguous(), z = z_t.contiguous();
  auto out = at::empty_like(x, at::MemoryFormat::Contiguous);
  if (x.numel() == 0) return out;
  const auto lt = as_double(logsnr_t, x), ls = as_double(logsnr_s, x), xv = as_double(x_var, x);
  const int64_t d = x.numel() / B, chunks = (d + kChunk - 1) / kChunk;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  if (d <= kRowMax && x.scalar_type() != at::kDouble) {
    const auto launch_row = [&](auto tag) {
      using scalar_t = decltype(tag);
      addim_row_kernel<scalar_t><<<B, kRowThreads, 0, stream>>>(x.data_ptr<scalar_t>(), z.data_ptr<scalar_t>(),
                                                                 out.data_ptr<scalar_t>(), lt.data_ptr<double>(),
                                                                 ls.data_ptr<double>(), xv.data_ptr<double>(), d);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    };
    AT_DISPATCH_SWITCH(x.scalar_type(), "addim_step_cuda",
                       AT_DISPATCH_CASE(at::kFloat, [&] { launch_row(scalar_t{}); })
                       AT_DISPATCH_CASE_REDUCED_FLOATING_TYPES([&] { launch_row(scalar_t{}); }));
    return out;
  }
  auto partials = at::empty({B * chunks}, x.options().dtype(at::kFloat));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "addim_step_cuda", [&] {
    residual_partials_kernel<scalar_t><<<B * chunks, kThreads, 0, stream>>>(
        x.data_ptr<scalar_t>(), z.data_ptr<scalar_t>(), lt.data_ptr<double>(), partials.data_ptr<float>(), d,
        chunks);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    addim_kernel<scalar_t><<<B * chunks, kThreads, 0, stream>>>(
        x.data_ptr<scalar_t>(), z.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), lt.data_ptr<double>(),
        ls.data_ptr<double>(), xv.data_ptr<double>(), partials.data_ptr<float>(), d, chunks);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(mcm_fast, CUDA, m) {
  m.impl("ddim_step_native", &ddim_step_cuda);
  m.impl("addim_step_native", &addim_step_cuda);
}

}  // namespace mcm_fast
