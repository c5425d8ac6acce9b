// Shared by the C++ CPU kernels: tile sizes and element loads/stores through the compute dtype.
#pragma once
#include <ATen/OpMathType.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <bit>
#include <cstdint>

namespace mcm_fast {

constexpr int64_t kGrain = 1 << 15;  // elements per task: large enough to amortize a task, fits in L2
constexpr int64_t kBlock = 1024;     // elements summed in the compute dtype before adding to a double

// Element loads and stores through the compute dtype, written so that the compiler vectorizes them (c10's
// scalar conversions branch on NaN and only vectorize inside ATen's per-CPU builds).
template <typename T>
inline at::opmath_type<T> load(T v) {
  return static_cast<at::opmath_type<T>>(v);
}
inline float load(c10::BFloat16 v) { return std::bit_cast<float>(static_cast<uint32_t>(v.x) << 16); }
inline float load(c10::Half v) { return static_cast<float>(std::bit_cast<_Float16>(v.x)); }

template <typename T>
inline T store(at::opmath_type<T> v) {
  return static_cast<T>(v);
}
template <>
inline c10::BFloat16 store<c10::BFloat16>(float v) {  // round to nearest even; NaN stays NaN
  const uint32_t u = std::bit_cast<uint32_t>(v);
  const uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  const bool nan = (u & 0x7FFFFFFFu) > 0x7F800000u;
  return c10::BFloat16(static_cast<uint16_t>(nan ? 0x7FC0u : rounded), c10::BFloat16::from_bits());
}
template <>
inline c10::Half store<c10::Half>(float v) {
  return c10::Half(std::bit_cast<uint16_t>(static_cast<_Float16>(v)), c10::Half::from_bits());
}

}  // namespace mcm_fast
