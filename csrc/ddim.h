// Shared by the CPU and CUDA kernels of the DDIM-family updates (math.md §2-3).
#pragma once
#include <ATen/ATen.h>
#include <cmath>

namespace mcm_fast {

// alpha = sqrt(sigmoid(lambda)), sigma = sqrt(sigmoid(-lambda)) (math.md §1), in double.
inline void alpha_sigma(double logsnr, double& alpha, double& sigma) {
  alpha = std::sqrt(1.0 / (1.0 + std::exp(-logsnr)));
  sigma = std::sqrt(1.0 / (1.0 + std::exp(logsnr)));
}

// Both updates are z_s = p * x_hat + q * (z_t - r * x_hat) with per-sample p = alpha_s, r = alpha_t and
// q = sigma_s / sigma_t (DDIM) or c / sigma_t (aDDIM); z_t - r * x_hat = sigma_t * eps_hat.
struct Coefs {
  double p, q, r;
};

// Checks the arguments shared by both ops and returns the batch size B; names the argument on failure.
inline int64_t check_update_args(const at::Tensor& x_hat, const at::Tensor& z_t,
                                 const at::Tensor& logsnr_t, const at::Tensor& logsnr_s) {
  TORCH_CHECK(x_hat.dim() >= 1, "x_hat: expected a [B, ...] tensor, got a 0-d tensor");
  TORCH_CHECK(z_t.sizes() == x_hat.sizes(), "z_t: expected shape ", x_hat.sizes(), " like x_hat, got ",
              z_t.sizes());
  TORCH_CHECK(z_t.scalar_type() == x_hat.scalar_type(), "z_t: expected dtype ", x_hat.scalar_type(),
              " like x_hat, got ", z_t.scalar_type());
  TORCH_CHECK(at::isFloatingType(x_hat.scalar_type()), "x_hat: expected a floating dtype, got ",
              x_hat.scalar_type());
  const int64_t B = x_hat.size(0);
  TORCH_CHECK(logsnr_t.dim() == 1 && logsnr_t.size(0) == B, "logsnr_t: expected shape [", B, "], got ",
              logsnr_t.sizes());
  TORCH_CHECK(logsnr_s.dim() == 1 && logsnr_s.size(0) == B, "logsnr_s: expected shape [", B, "], got ",
              logsnr_s.sizes());
  return B;
}

}  // namespace mcm_fast
