// Shared by the CPU and CUDA kernels of the DDIM family (math.md §2-3); mcm_loss.h builds the MCM target on it.
#pragma once
#include <ATen/ATen.h>
#include <c10/macros/Macros.h>
#include <math.h>

namespace mcm_fast {

// alpha = sqrt(sigmoid(lambda)), sigma = sqrt(sigmoid(-lambda)) (math.md §1), in double, on host or device.
C10_HOST_DEVICE inline void alpha_sigma(double logsnr, double& alpha, double& sigma) {
  alpha = sqrt(1.0 / (1.0 + exp(-logsnr)));
  sigma = sqrt(1.0 / (1.0 + exp(logsnr)));
}

// Both updates are z_s = p * x_hat + q * (z_t - r * x_hat) with per-sample p = alpha_s, r = alpha_t and
// q = sigma_s / sigma_t (DDIM) or c / sigma_t (aDDIM); z_t - r * x_hat = sigma_t * eps_hat.
struct Coefs {
  double p, q, r;
};

// Argument checks that name the argument and what was expected.
inline void check_like(const char* name, const at::Tensor& x, const char* ref_name, const at::Tensor& ref) {
  TORCH_CHECK(x.sizes() == ref.sizes(), name, ": expected shape ", ref.sizes(), " like ", ref_name, ", got ",
              x.sizes());
  TORCH_CHECK(x.scalar_type() == ref.scalar_type(), name, ": expected dtype ", ref.scalar_type(), " like ",
              ref_name, ", got ", x.scalar_type());
}

inline void check_per_sample(const char* name, const at::Tensor& v, int64_t B) {
  TORCH_CHECK(v.dim() == 1 && v.size(0) == B, name, ": expected shape [", B, "], got ", v.sizes());
}

inline int64_t check_batch(const char* name, const at::Tensor& x) {
  TORCH_CHECK(x.dim() >= 1, name, ": expected a [B, ...] tensor, got a 0-d tensor");
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), name, ": expected a floating dtype, got ", x.scalar_type());
  return x.size(0);
}

// Checks the arguments shared by both updates and returns the batch size B.
inline int64_t check_update_args(const at::Tensor& x_hat, const at::Tensor& z_t,
                                 const at::Tensor& logsnr_t, const at::Tensor& logsnr_s) {
  const int64_t B = check_batch("x_hat", x_hat);
  check_like("z_t", z_t, "x_hat", x_hat);
  check_per_sample("logsnr_t", logsnr_t, B);
  check_per_sample("logsnr_s", logsnr_s, B);
  return B;
}

}  // namespace mcm_fast
