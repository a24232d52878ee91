// Vectorised span helpers shared by the CPU element kernels (adam_cpu_kernel.cpp,
// sgd_cpu_kernel.cpp). Included by files compiled once per CPU capability: everything here lives
// in that capability's namespace, in an unnamed namespace (one copy per translation unit).
#pragma once

#include <algorithm>
#include <type_traits>

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

namespace torchopt_accel {
namespace CPU_CAPABILITY {
namespace {

using at::vec::Vectorized;

template <typename T>
using opmath_t = std::conditional_t<std::is_same_v<T, double>, double, float>;

// Loads `count` (<= width) elements of T as op-math vectors; a null pointer reads zeros.
template <typename T>
struct Lanes {
  using O = opmath_t<T>;
  using V = Vectorized<O>;
  static constexpr bool kReduced = !std::is_same_v<T, O>;
  static constexpr int64_t kWidth = kReduced ? 2 * V::size() : V::size();
  V a, b;  // b unused for float / double

  static Lanes load(const T* p, int64_t count) {
    Lanes r;
    if (p == nullptr) {
      r.a = V(O(0));
      r.b = V(O(0));
    } else if constexpr (kReduced) {
      auto raw = count == kWidth ? Vectorized<T>::loadu(p) : Vectorized<T>::loadu(p, count);
      auto [x, y] = at::vec::convert_to_float<T>(raw);
      r.a = x;
      r.b = y;
    } else {
      r.a = count == kWidth ? V::loadu(p) : V::loadu(p, count);
    }
    return r;
  }

  void store(T* p, int64_t count) const {
    if constexpr (kReduced) {
      auto raw = at::vec::convert_from_float<T>(a, b);
      if (count == kWidth) {
        raw.store(p);
      } else {
        raw.store(p, count);
      }
    } else {
      if (count == kWidth) {
        a.store(p);
      } else {
        a.store(p, count);
      }
    }
  }
};

// Runs `f(in_vectors, out_vectors)` over n elements with NIN inputs and NOUT outputs.
template <typename T, int NIN, int NOUT, typename F>
void map_span(int64_t n, const void* const* in, void* const* out, F f) {
  using L = Lanes<T>;
  using V = typename L::V;
  const T* ip[NIN];
  T* op[NOUT];
  for (int k = 0; k < NIN; ++k) ip[k] = static_cast<const T*>(in[k]);
  for (int k = 0; k < NOUT; ++k) op[k] = static_cast<T*>(out[k]);
  for (int64_t i = 0; i < n; i += L::kWidth) {
    const int64_t count = std::min<int64_t>(L::kWidth, n - i);
    L x[NIN];
    L y[NOUT];
    for (int k = 0; k < NIN; ++k) x[k] = L::load(ip[k] ? ip[k] + i : nullptr, count);
    {
      V xa[NIN], ya[NOUT];
      for (int k = 0; k < NIN; ++k) xa[k] = x[k].a;
      f(xa, ya);
      for (int k = 0; k < NOUT; ++k) y[k].a = ya[k];
    }
    if constexpr (L::kReduced) {
      V xb[NIN], yb[NOUT];
      for (int k = 0; k < NIN; ++k) xb[k] = x[k].b;
      f(xb, yb);
      for (int k = 0; k < NOUT; ++k) y[k].b = yb[k];
    }
    for (int k = 0; k < NOUT; ++k) y[k].store(op[k] + i, count);
  }
}

}  // namespace
}  // namespace CPU_CAPABILITY
}  // namespace torchopt_accel
