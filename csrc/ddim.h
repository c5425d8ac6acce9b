// Shared by the CPU and CUDA kernels of the DDIM family (math.md §2-3) and of the MCM target (Algorithm 1).
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

// x_target = a x_ref + b z_s + c z_t: DDIM of x_ref from s to t_step, then invDDIM from t to t_step against
// z_t (Algorithm 1, steps 6-7). Where s = t_step the jump is the identity: a = 0 and x_ref is never read.
struct TargetCoefs {
  double a, b, c;
};

C10_HOST_DEVICE inline TargetCoefs target_coefs(double logsnr_t, double logsnr_s, double logsnr_step) {
  double alpha_t, sigma_t, alpha_s, sigma_s, alpha_q, sigma_q;
  alpha_sigma(logsnr_t, alpha_t, sigma_t);
  alpha_sigma(logsnr_s, alpha_s, sigma_s);
  alpha_sigma(logsnr_step, alpha_q, sigma_q);
  const bool identity = logsnr_s == logsnr_step;
  const double q1 = identity ? 1.0 : sigma_q / sigma_s;  // z_ref = k1 x_ref + q1 z_s
  const double k1 = identity ? 0.0 : alpha_q - alpha_s * q1;
  const double ratio = sigma_q / sigma_t;
  const double k = alpha_q - alpha_t * ratio;
  return {k1 / k, q1 / k, -ratio / k};
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

// Checks the arguments of the MCM target and returns the batch size B.
inline int64_t check_target_args(const at::Tensor& x_ref, const at::Tensor& z_s, const at::Tensor& z_t,
                                 const at::Tensor& logsnr_t, const at::Tensor& logsnr_s,
                                 const at::Tensor& logsnr_step) {
  const int64_t B = check_batch("x_ref", x_ref);
  check_like("z_s", z_s, "x_ref", x_ref);
  check_like("z_t", z_t, "x_ref", x_ref);
  check_per_sample("logsnr_t", logsnr_t, B);
  check_per_sample("logsnr_s", logsnr_s, B);
  check_per_sample("logsnr_step", logsnr_step, B);
  return B;
}

}  // namespace mcm_fast
