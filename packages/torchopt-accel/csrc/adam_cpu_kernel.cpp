// Vectorised element kernels of the fused Adam op. This file is compiled once per CPU capability
// (DEFAULT, AVX2, AVX512) with the matching -m flags and CPU_CAPABILITY macro, exactly as ATen
// compiles its own kernels; adam_cpu.cpp picks one at run time.
#include "adam.h"
#include "cpu_vec.h"

namespace torchopt_accel {
namespace CPU_CAPABILITY {
namespace {

using at::vec::Vectorized;

template <typename T>
void forward_typed(int64_t n, const void* const* in, void* const* out, const AdamScalars& s) {
  using O = opmath_t<T>;
  using V = Vectorized<O>;
  const V b1(O(s.b1)), b2(O(s.b2)), c1(O(s.one_minus_b1)), c2(O(s.one_minus_b2));
  const V ibc1(O(s.inv_bc1)), ibc2(O(s.inv_bc2)), eps(O(s.eps)), eps_root(O(s.eps_root));
  map_span<T, 3, 3>(n, in, out, [&](const V* x, V* y) {
    const V& g = x[0];
    const V m = at::vec::fmadd(b1, x[1], c1 * g);
    const V v = at::vec::fmadd(b2, x[2], c2 * (g * g));
    const V denom = at::vec::fmadd(v, ibc2, eps_root).sqrt() + eps;
    y[0] = (m * ibc1) / denom;
    y[1] = m;
    y[2] = v;
  });
}

template <typename T>
void backward_typed(int64_t n, const void* const* in, void* const* out, const AdamScalars& s) {
  using O = opmath_t<T>;
  using V = Vectorized<O>;
  const V b1(O(s.b1)), b2(O(s.b2)), c1(O(s.one_minus_b1)), c2(O(s.one_minus_b2));
  const V ibc1(O(s.inv_bc1)), ibc2(O(s.inv_bc2)), eps(O(s.eps)), eps_root(O(s.eps_root));
  const V two_c2(O(2.0 * s.one_minus_b2)), half_ibc12(O(0.5 * s.inv_bc1 * s.inv_bc2));
  map_span<T, 6, 3>(n, in, out, [&](const V* x, V* y) {
    const V& gu = x[0];
    const V& g = x[3];
    const V m = at::vec::fmadd(b1, x[4], c1 * g);
    const V v = at::vec::fmadd(b2, x[5], c2 * (g * g));
    const V root = at::vec::fmadd(v, ibc2, eps_root).sqrt();
    const V denom = root + eps;
    const V gm = x[1] + gu * ibc1 / denom;
    // Where s = 0 (v' = 0, eps_root = 0: an entry whose gradient was always 0) the chain through
    // the square root contributes 0 instead of 0/0 (see adam.h).
    const V gv = x[2] - V::blendv((gu * m * half_ibc12) / (root * denom * denom), V(O(0)),
                                  root == V(O(0)));
    y[0] = at::vec::fmadd(c1, gm, two_c2 * g * gv);
    y[1] = b1 * gm;
    y[2] = b2 * gv;
  });
}

// One torch.optim.Adam / AdamW step written to the parameters. kCoupled: L2 weight decay is
// added to the gradient (skipped entirely otherwise, so a non-finite p never leaks into g).
template <typename T, bool kCoupled>
void apply_typed(int64_t n, const void* const* in, void* const* out, const AdamScalars& s) {
  using O = opmath_t<T>;
  using V = Vectorized<O>;
  const V b1(O(s.b1)), b2(O(s.b2)), c1(O(s.one_minus_b1)), c2(O(s.one_minus_b2));
  const V ibc2(O(s.inv_bc2)), eps(O(s.eps)), eps_root(O(s.eps_root));
  const V sign(O(s.sign)), wd(O(s.coupled_wd)), decay(O(s.decay)), step(O(s.step_size));
  map_span<T, 4, 3>(n, in, out, [&](const V* x, V* y) {
    V g = sign * x[1];
    if constexpr (kCoupled) g = at::vec::fmadd(wd, x[0], g);
    const V m = at::vec::fmadd(b1, x[2], c1 * g);
    const V v = at::vec::fmadd(b2, x[3], c2 * (g * g));
    const V denom = at::vec::fmadd(v, ibc2, eps_root).sqrt() + eps;
    y[0] = x[0] * decay - step * (m / denom);
    y[1] = m;
    y[2] = v;
  });
}

template <template <typename> class K>
void dispatch(c10::ScalarType dtype, int64_t n, const void* const* in, void* const* out,
              const AdamScalars& s) {
  switch (dtype) {
    case c10::ScalarType::Float:
      return K<float>::run(n, in, out, s);
    case c10::ScalarType::Double:
      return K<double>::run(n, in, out, s);
    case c10::ScalarType::BFloat16:
      return K<c10::BFloat16>::run(n, in, out, s);
    case c10::ScalarType::Half:
      return K<c10::Half>::run(n, in, out, s);
    default:
      break;  // dtypes are checked before the kernels run
  }
}

template <typename T>
struct Forward {
  static void run(int64_t n, const void* const* in, void* const* out, const AdamScalars& s) {
    forward_typed<T>(n, in, out, s);
  }
};

template <typename T>
struct Backward {
  static void run(int64_t n, const void* const* in, void* const* out, const AdamScalars& s) {
    backward_typed<T>(n, in, out, s);
  }
};

template <typename T>
struct Apply {
  static void run(int64_t n, const void* const* in, void* const* out, const AdamScalars& s) {
    if (s.coupled_wd != 0.0) {
      apply_typed<T, true>(n, in, out, s);
    } else {
      apply_typed<T, false>(n, in, out, s);
    }
  }
};

}  // namespace

void forward_span(c10::ScalarType dtype, int64_t n, const void* const* in, void* const* out,
                  const AdamScalars& s) {
  dispatch<Forward>(dtype, n, in, out, s);
}

void backward_span(c10::ScalarType dtype, int64_t n, const void* const* in, void* const* out,
                   const AdamScalars& s) {
  dispatch<Backward>(dtype, n, in, out, s);
}

void apply_span(c10::ScalarType dtype, int64_t n, const void* const* in, void* const* out,
                const AdamScalars& s) {
  dispatch<Apply>(dtype, n, in, out, s);
}

}  // namespace CPU_CAPABILITY
}  // namespace torchopt_accel
