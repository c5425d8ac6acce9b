// The MCM target of Algorithm 1 (steps 6-7), shared by the CPU and CUDA kernels of mcm_target and the
// squared distances; built on the DDIM family's coefficients and checks (ddim.h).
#pragma once
#include "ddim.h"

namespace mcm_fast {

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
