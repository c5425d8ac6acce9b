// The MCM target and squared distance (Algorithm 1, steps 6-8): op schemas and the C++ CPU kernels.
//
// x_target = a x_ref + b z_s + c z_t with per-sample coefficients (target_coefs in ddim.h). The distance ops
// return ||x_hat - x_target||^2 per sample and, when a gradient will be needed (save_diff), diff = x_hat -
// x_target in the compute dtype; the backward op scales diff by 2 dL/d||.||^2 and rounds once to x_hat's
// dtype. One kernel serves both distance ops: it reads x_target, or computes it in registers from x_ref, z_s
// and z_t (the fused op: one pass over x_hat, x_ref, z_s, z_t, the target never stored). Sums run over tiles
// that never straddle two samples, in the compute dtype per kSumBlock elements and in double beyond, and the
// tiles of a sample are added in a fixed order (deterministic). Inputs are made contiguous once.
#include "cpu_kernels.h"
#include "mcm_loss.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <tuple>
#include <vector>

namespace mcm_fast {
namespace {

// Elements summed in the compute dtype before adding to a double: short enough that each SIMD lane adds
// a few dozen terms, so the float32 sum stays within a few ulps of a pairwise sum.
constexpr int64_t kSumBlock = 256;

std::vector<TargetCoefs> host_target_coefs(const at::Tensor& logsnr_t, const at::Tensor& logsnr_s,
                                           const at::Tensor& logsnr_step) {
  const auto lt = logsnr_t.to(at::kCPU, at::kDouble).contiguous();
  const auto ls = logsnr_s.to(at::kCPU, at::kDouble).contiguous();
  const auto lq = logsnr_step.to(at::kCPU, at::kDouble).contiguous();
  std::vector<TargetCoefs> coefs(lt.numel());
  for (size_t b = 0; b < coefs.size(); ++b)
    coefs[b] = target_coefs(lt.data_ptr<double>()[b], ls.data_ptr<double>()[b], lq.data_ptr<double>()[b]);
  return coefs;
}

// The target at element j of a sample; kRef = false skips x_ref (a = 0: s = t_step).
template <bool kRef, typename scalar_t, typename acc_t>
inline acc_t target_at(const scalar_t* x_ref, const scalar_t* z_s, const scalar_t* z_t, int64_t j, acc_t a,
                       acc_t b, acc_t c) {
  const acc_t rest = b * load(z_s[j]) + c * load(z_t[j]);
  return kRef ? a * load(x_ref[j]) + rest : rest;
}

template <typename scalar_t>
void write_target(const scalar_t* x_ref, const scalar_t* z_s, const scalar_t* z_t, scalar_t* out,
                  const TargetCoefs* coefs, int64_t B, int64_t d) {
  using acc_t = at::opmath_type<scalar_t>;
  at::parallel_for(0, B * d, kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end;) {
      const int64_t b = i / d, stop = std::min(end, (b + 1) * d), len = stop - i;
      const acc_t ca = coefs[b].a, cb = coefs[b].b, cc = coefs[b].c;
      const scalar_t* __restrict__ xr = x_ref + i;
      const scalar_t* __restrict__ zs = z_s + i;
      const scalar_t* __restrict__ zt = z_t + i;
      scalar_t* __restrict__ os = out + i;
      if (coefs[b].a != 0.0) {
#pragma omp simd
        for (int64_t j = 0; j < len; ++j) os[j] = store<scalar_t>(target_at<true>(xr, zs, zt, j, ca, cb, cc));
      } else {
#pragma omp simd
        for (int64_t j = 0; j < len; ++j) os[j] = store<scalar_t>(target_at<false>(xr, zs, zt, j, ca, cb, cc));
      }
      i = stop;
    }
  });
}

// Sum over [lo, lo + len) of (x_hat - target)^2, writing diff when kSave; kFused: the target from x_ref (a),
// z_s and z_t with kRef telling whether x_ref enters; else the target is read from `a`.
template <bool kFused, bool kRef, bool kSave, typename scalar_t, typename acc_t>
double tile_sqdist(const scalar_t* x, const scalar_t* a, const scalar_t* zs, const scalar_t* zt, acc_t* diff,
                   int64_t lo, int64_t hi, const TargetCoefs& coefs) {
  const acc_t ca = coefs.a, cb = coefs.b, cc = coefs.c;
  double total = 0.0;
  for (int64_t blo = lo; blo < hi; blo += kSumBlock) {
    const scalar_t* __restrict__ xs = x + blo;
    const scalar_t* __restrict__ as = a + blo;
    const scalar_t* __restrict__ zss = kFused ? zs + blo : nullptr;
    const scalar_t* __restrict__ zts = kFused ? zt + blo : nullptr;
    acc_t* __restrict__ ds = kSave ? diff + blo : nullptr;
    const int64_t len = std::min(kSumBlock, hi - blo);
    acc_t acc = 0;
#pragma omp simd reduction(+ : acc)
    for (int64_t j = 0; j < len; ++j) {
      const acc_t target = kFused ? target_at<kRef>(as, zss, zts, j, ca, cb, cc) : load(as[j]);
      const acc_t e = load(xs[j]) - target;
      if constexpr (kSave) ds[j] = e;
      acc += e * e;
    }
    total += static_cast<double>(acc);
  }
  return total;
}

template <bool kFused, typename scalar_t>
void sqdist(const scalar_t* x, const scalar_t* a, const scalar_t* zs, const scalar_t* zt,
            at::opmath_type<scalar_t>* diff, const TargetCoefs* coefs, double* dist, int64_t B, int64_t d) {
  const int64_t tiles = (d + kGrain - 1) / kGrain;  // per sample
  std::vector<double> partial(B * tiles, 0.0);
  at::parallel_for(0, B * tiles, 1, [&](int64_t begin, int64_t end) {
    for (int64_t tile = begin; tile < end; ++tile) {
      const int64_t b = tile / tiles;
      const int64_t lo = b * d + (tile % tiles) * kGrain, hi = std::min(lo + kGrain, (b + 1) * d);
      const TargetCoefs c = kFused ? coefs[b] : TargetCoefs{0.0, 0.0, 0.0};
      const bool ref = kFused && c.a != 0.0;
      if (diff != nullptr) {
        partial[tile] = ref ? tile_sqdist<kFused, true, true>(x, a, zs, zt, diff, lo, hi, c)
                            : tile_sqdist<kFused, false, true>(x, a, zs, zt, diff, lo, hi, c);
      } else {
        partial[tile] = ref ? tile_sqdist<kFused, true, false>(x, a, zs, zt, diff, lo, hi, c)
                            : tile_sqdist<kFused, false, false>(x, a, zs, zt, diff, lo, hi, c);
      }
    }
  });
  for (int64_t b = 0; b < B; ++b) {
    dist[b] = 0.0;
    for (int64_t k = 0; k < tiles; ++k) dist[b] += partial[b * tiles + k];
  }
}

// Shared by both distance ops: x_target is `target`, or with z_s given the fused target of x_ref = `target`.
std::tuple<at::Tensor, at::Tensor> sqdist_cpu(const at::Tensor& x_hat, const at::Tensor& target,
                                              const at::Tensor* z_s, const at::Tensor* z_t,
                                              const std::vector<TargetCoefs>& coefs, bool save_diff) {
  const int64_t B = x_hat.size(0);
  const auto compute = x_hat.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const auto x = x_hat.contiguous(), a = target.contiguous();
  const auto zs = z_s ? z_s->contiguous() : at::Tensor(), zt = z_t ? z_t->contiguous() : at::Tensor();
  auto diff = save_diff ? at::empty(x.sizes(), x.options().dtype(compute)) : at::empty({0}, x.options());
  auto dist = at::zeros({B}, x.options().dtype(at::kDouble));
  if (x.numel() > 0) {
    const int64_t d = x.numel() / B;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "mcm_sqdist_cpu", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      acc_t* dp = save_diff ? diff.data_ptr<acc_t>() : nullptr;
      if (z_s) {
        sqdist<true, scalar_t>(x.data_ptr<scalar_t>(), a.data_ptr<scalar_t>(), zs.data_ptr<scalar_t>(),
                               zt.data_ptr<scalar_t>(), dp, coefs.data(), dist.data_ptr<double>(), B, d);
      } else {
        sqdist<false, scalar_t>(x.data_ptr<scalar_t>(), a.data_ptr<scalar_t>(), nullptr, nullptr, dp, nullptr,
                                dist.data_ptr<double>(), B, d);
      }
    });
  }
  return {dist.to(compute), diff};
}

at::Tensor mcm_target_cpu(const at::Tensor& x_ref, const at::Tensor& z_s, const at::Tensor& z_t,
                          const at::Tensor& logsnr_t, const at::Tensor& logsnr_s, const at::Tensor& logsnr_step) {
  const int64_t B = check_target_args(x_ref, z_s, z_t, logsnr_t, logsnr_s, logsnr_step);
  const auto xr = x_ref.contiguous(), zs = z_s.contiguous(), zt = z_t.contiguous();
  auto out = at::empty_like(xr, at::MemoryFormat::Contiguous);
  if (xr.numel() == 0) return out;
  const auto coefs = host_target_coefs(logsnr_t, logsnr_s, logsnr_step);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, xr.scalar_type(), "mcm_target_cpu", [&] {
    write_target<scalar_t>(xr.data_ptr<scalar_t>(), zs.data_ptr<scalar_t>(), zt.data_ptr<scalar_t>(),
                           out.data_ptr<scalar_t>(), coefs.data(), B, xr.numel() / B);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> mcm_sqdist_cpu(const at::Tensor& x_hat, const at::Tensor& target,
                                                  bool save_diff) {
  check_batch("x_hat", x_hat);
  check_like("target", target, "x_hat", x_hat);
  return sqdist_cpu(x_hat, target, nullptr, nullptr, {}, save_diff);
}

std::tuple<at::Tensor, at::Tensor> mcm_target_sqdist_cpu(const at::Tensor& x_hat, const at::Tensor& x_ref,
                                                         const at::Tensor& z_s, const at::Tensor& z_t,
                                                         const at::Tensor& logsnr_t, const at::Tensor& logsnr_s,
                                                         const at::Tensor& logsnr_step, bool save_diff) {
  check_target_args(x_ref, z_s, z_t, logsnr_t, logsnr_s, logsnr_step);
  check_like("x_hat", x_hat, "x_ref", x_ref);
  return sqdist_cpu(x_hat, x_ref, &z_s, &z_t, host_target_coefs(logsnr_t, logsnr_s, logsnr_step), save_diff);
}

// out = 2 g[b] diff per sample, rounded once to scalar_t.
template <typename scalar_t>
void scale_rows(const at::opmath_type<scalar_t>* diff, const double* g, scalar_t* out, int64_t B, int64_t d) {
  using acc_t = at::opmath_type<scalar_t>;
  at::parallel_for(0, B * d, kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end;) {
      const int64_t b = i / d, stop = std::min(end, (b + 1) * d), len = stop - i;
      const acc_t scale = static_cast<acc_t>(2.0 * g[b]);
      const acc_t* __restrict__ s = diff + i;
      scalar_t* __restrict__ o = out + i;
#pragma omp simd
      for (int64_t j = 0; j < len; ++j) o[j] = store<scalar_t>(scale * s[j]);
      i = stop;
    }
  });
}

at::Tensor mcm_sqdist_backward_cpu(const at::Tensor& diff, const at::Tensor& grad_dist_sq, at::ScalarType dtype) {
  const int64_t B = check_batch("diff", diff);
  check_per_sample("grad_dist_sq", grad_dist_sq, B);
  const auto dd = diff.contiguous();
  auto out = at::empty(dd.sizes(), dd.options().dtype(dtype));
  if (dd.numel() == 0) return out;
  const auto g = grad_dist_sq.to(at::kCPU, at::kDouble).contiguous();
  const double* gp = g.data_ptr<double>();
  const int64_t d = dd.numel() / B;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "mcm_sqdist_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    TORCH_CHECK(dd.scalar_type() == c10::CppTypeToScalarType<acc_t>::value, "diff: expected dtype ",
                c10::CppTypeToScalarType<acc_t>::value, " (the compute dtype of ", dtype, "), got ", dd.scalar_type());
    scale_rows<scalar_t>(dd.data_ptr<acc_t>(), gp, out.data_ptr<scalar_t>(), B, d);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(mcm_fast, m) {
  m.def("mcm_target_native(Tensor x_ref, Tensor z_s, Tensor z_t, Tensor logsnr_t, Tensor logsnr_s, "
        "Tensor logsnr_step) -> Tensor");
  m.def("mcm_sqdist_native(Tensor x_hat, Tensor target, bool save_diff) -> (Tensor, Tensor)");
  m.def("mcm_target_sqdist_native(Tensor x_hat, Tensor x_ref, Tensor z_s, Tensor z_t, Tensor logsnr_t, "
        "Tensor logsnr_s, Tensor logsnr_step, bool save_diff) -> (Tensor, Tensor)");
  m.def("mcm_sqdist_backward_native(Tensor diff, Tensor grad_dist_sq, ScalarType dtype) -> Tensor");
}

TORCH_LIBRARY_IMPL(mcm_fast, CPU, m) {
  m.impl("mcm_target_native", &mcm_target_cpu);
  m.impl("mcm_sqdist_native", &mcm_sqdist_cpu);
  m.impl("mcm_target_sqdist_native", &mcm_target_sqdist_cpu);
  m.impl("mcm_sqdist_backward_native", &mcm_sqdist_backward_cpu);
}

}  // namespace mcm_fast
