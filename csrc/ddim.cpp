// DDIM and aDDIM updates (math.md §2-3): op schemas and the C++ CPU kernels (OpenMP via at::parallel_for).
//
// One op computes z_s = p * x_hat + q * (z_t - r * x_hat) with per-sample coefficients. aDDIM first needs
// the per-sample norm ||z_t - alpha_t x_hat||^2 = sigma_t^2 ||eps_hat||^2: a first parallel pass over
// (sample, chunk) tiles writes partial sums in double, summed per sample in a fixed order (deterministic);
// the second pass writes z_s. Bytes moved: DDIM reads x_hat and z_t once and writes z_s; aDDIM runs both
// passes on groups of samples of at most kCacheBytes, so its second read comes from cache. Inputs are made contiguous once; arithmetic is float32 for
// fp16/bf16/fp32 inputs and float64 for float64 inputs, per-sample coefficients are computed in double.
// Built with -march=native (setup.py): the extension is compiled on the machine that runs it.
#include "ddim.h"
#include "cpu_kernels.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <bit>
#include <cstdint>
#include <vector>

namespace mcm_fast {
namespace {

constexpr int64_t kCacheBytes = 8 << 20;  // x_hat + z_t bytes per aDDIM group: well inside a shared L3

template <typename scalar_t>
void combine(const scalar_t* x, const scalar_t* z, scalar_t* out, const Coefs* coefs, int64_t B, int64_t d) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t n = B * d;
  at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end;) {
      const int64_t b = i / d;
      const int64_t stop = std::min(end, (b + 1) * d);
      const acc_t p = static_cast<acc_t>(coefs[b].p);
      const acc_t q = static_cast<acc_t>(coefs[b].q);
      const acc_t r = static_cast<acc_t>(coefs[b].r);
      const scalar_t* __restrict__ xs = x + i;
      const scalar_t* __restrict__ zs = z + i;
      scalar_t* __restrict__ os = out + i;
      const int64_t len = stop - i;
#pragma omp simd
      for (int64_t j = 0; j < len; ++j) {
        const acc_t xj = load(xs[j]);
        os[j] = store<scalar_t>(p * xj + q * (load(zs[j]) - r * xj));
      }
      i = stop;
    }
  });
}

// Per-sample sum of (z - r x)^2; tiles of kGrain elements never straddle two samples. Each block of kBlock
// elements is summed in the compute dtype (vectorized), blocks and tiles in double, tiles in a fixed order.
template <typename scalar_t>
std::vector<double> residual_sq_norms(const scalar_t* x, const scalar_t* z, const Coefs* coefs, int64_t B,
                                      int64_t d) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t tiles_per_sample = (d + kGrain - 1) / kGrain;
  std::vector<double> partial(B * tiles_per_sample, 0.0);
  at::parallel_for(0, B * tiles_per_sample, 1, [&](int64_t begin, int64_t end) {
    for (int64_t tile = begin; tile < end; ++tile) {
      const int64_t b = tile / tiles_per_sample;
      const int64_t lo = b * d + (tile % tiles_per_sample) * kGrain;
      const int64_t hi = std::min(lo + kGrain, (b + 1) * d);
      const acc_t r = static_cast<acc_t>(coefs[b].r);
      double total = 0.0;
      for (int64_t blo = lo; blo < hi; blo += kBlock) {
        const scalar_t* __restrict__ xs = x + blo;  // local unaliased pointers: contiguous vector loads
        const scalar_t* __restrict__ zs = z + blo;
        const int64_t len = std::min(kBlock, hi - blo);
        acc_t acc = 0;
#pragma omp simd reduction(+ : acc)
        for (int64_t j = 0; j < len; ++j) {
          const acc_t e = load(zs[j]) - r * load(xs[j]);
          acc += e * e;
        }
        total += static_cast<double>(acc);
      }
      partial[tile] = total;
    }
  });
  std::vector<double> norms(B, 0.0);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t k = 0; k < tiles_per_sample; ++k) norms[b] += partial[b * tiles_per_sample + k];
  return norms;
}

std::vector<Coefs> ddim_coefs(const at::Tensor& logsnr_t, const at::Tensor& logsnr_s) {
  const auto lt = logsnr_t.to(at::kCPU, at::kDouble).contiguous();
  const auto ls = logsnr_s.to(at::kCPU, at::kDouble).contiguous();
  std::vector<Coefs> coefs(lt.numel());
  for (size_t b = 0; b < coefs.size(); ++b) {
    double alpha_t, sigma_t, alpha_s, sigma_s;
    alpha_sigma(lt.data_ptr<double>()[b], alpha_t, sigma_t);
    alpha_sigma(ls.data_ptr<double>()[b], alpha_s, sigma_s);
    coefs[b] = {alpha_s, sigma_s / sigma_t, alpha_t};
  }
  return coefs;
}

at::Tensor ddim_step_cpu(const at::Tensor& x_hat, const at::Tensor& z_t, const at::Tensor& logsnr_t,
                         const at::Tensor& logsnr_s) {
  check_update_args(x_hat, z_t, logsnr_t, logsnr_s);
  const auto x = x_hat.contiguous();
  const auto z = z_t.contiguous();
  auto out = at::empty_like(x, at::MemoryFormat::Contiguous);
  const auto coefs = ddim_coefs(logsnr_t, logsnr_s);
  const int64_t d = x.numel() / std::max<int64_t>(x.size(0), 1);
  if (x.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "ddim_step_cpu", [&] {
    combine<scalar_t>(x.data_ptr<scalar_t>(), z.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), coefs.data(),
                      x.size(0), d);
  });
  return out;
}

at::Tensor addim_step_cpu(const at::Tensor& x_hat, const at::Tensor& z_t, const at::Tensor& logsnr_t,
                          const at::Tensor& logsnr_s, const at::Tensor& x_var) {
  const int64_t B = check_update_args(x_hat, z_t, logsnr_t, logsnr_s);
  TORCH_CHECK(x_var.dim() == 1 && x_var.size(0) == B, "x_var: expected shape [", B, "], got ",
              x_var.sizes());
  const auto x = x_hat.contiguous();
  const auto z = z_t.contiguous();
  auto out = at::empty_like(x, at::MemoryFormat::Contiguous);
  if (x.numel() == 0) return out;
  auto coefs = ddim_coefs(logsnr_t, logsnr_s);
  const auto var = x_var.to(at::kCPU, at::kDouble).contiguous();
  const int64_t d = x.numel() / B;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "addim_step_cpu", [&] {
    // Groups of samples small enough that the update pass re-reads x_hat and z_t from cache, not memory.
    const int64_t group = std::max<int64_t>(1, kCacheBytes / (2 * d * static_cast<int64_t>(sizeof(scalar_t))));
    const double* xv = var.data_ptr<double>();
    for (int64_t b0 = 0; b0 < B; b0 += group) {
      const int64_t nb = std::min(group, B - b0);
      const scalar_t* xg = x.data_ptr<scalar_t>() + b0 * d;
      const scalar_t* zg = z.data_ptr<scalar_t>() + b0 * d;
      const auto norms = residual_sq_norms<scalar_t>(xg, zg, coefs.data() + b0, nb, d);
      for (int64_t i = 0; i < nb; ++i) {
        // c / sigma_t = sqrt(sigma_s^2 / sigma_t^2 + d K^2 x_var / ||z_t - alpha_t x_hat||^2), math.md §3, with
        // K = alpha_s - alpha_t sigma_s / sigma_t = p - r q; x_var = 0 is DDIM exactly, even when the norm is 0.
        Coefs& c = coefs[b0 + i];
        const double K = c.p - c.r * c.q;
        const double extra = xv[b0 + i] > 0.0 ? static_cast<double>(d) * K * K * xv[b0 + i] / norms[i] : 0.0;
        c.q = std::sqrt(c.q * c.q + extra);
      }
      combine<scalar_t>(xg, zg, out.data_ptr<scalar_t>() + b0 * d, coefs.data() + b0, nb, d);
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(mcm_fast, m) {
  m.def("ddim_step_native(Tensor x_hat, Tensor z_t, Tensor logsnr_t, Tensor logsnr_s) -> Tensor");
  m.def("addim_step_native(Tensor x_hat, Tensor z_t, Tensor logsnr_t, Tensor logsnr_s, Tensor x_var) -> Tensor");
}

TORCH_LIBRARY_IMPL(mcm_fast, CPU, m) {
  m.impl("ddim_step_native", &ddim_step_cpu);
  m.impl("addim_step_native", &addim_step_cpu);
}

}  // namespace mcm_fast
