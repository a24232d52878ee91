// Vectorised element kernel of the in-place momentum-SGD update (sgd.h). Compiled once per CPU
// capability (DEFAULT, AVX2, AVX512) like adam_cpu_kernel.cpp; sgd_cpu.cpp picks one at run time.
// The first step, weight decay and Nesterov are template parameters, so each variant reads only
// the tensors it needs: g and b (b not on the first step), p only with weight decay.
#include "cpu_vec.h"
#include "sgd.h"

namespace torchopt_accel {
namespace CPU_CAPABILITY {
namespace {

using at::vec::Vectorized;

template <typename T, bool kFirst, bool kDecay, bool kNesterov>
void sgd_typed(int64_t n, const void* const* in, void* const* out, const SgdScalars& s) {
  using O = opmath_t<T>;
  using V = Vectorized<O>;
  constexpr int kIn = 1 + (kFirst ? 0 : 1) + (kDecay ? 1 : 0);
  constexpr int kP = kFirst ? 1 : 2;  // index of p among the packed inputs
  const void* packed[3] = {in[0], nullptr, nullptr};
  if constexpr (!kFirst) packed[1] = in[1];
  if constexpr (kDecay) packed[kP] = in[2];
  const V neg_lr(O(s.neg_lr)), mom(O(s.momentum)), gw(O(s.grad_weight)), sign(O(s.sign));
  const V wd(O(s.weight_decay));
  map_span<T, kIn, 2>(n, packed, out, [&](const V* x, V* y) {
    V g = sign * x[0];
    if constexpr (kDecay) g = at::vec::fmadd(wd, x[kP], g);
    V b;
    if constexpr (kFirst) {
      b = g;
    } else {
      b = at::vec::fmadd(mom, x[1], gw * g);
    }
    V d = b;
    if constexpr (kNesterov) d = at::vec::fmadd(mom, b, g);
    y[0] = neg_lr * d;
    y[1] = b;
  });
}

template <typename T>
void sgd_bools(int64_t n, const void* const* in, void* const* out, const SgdScalars& s) {
  const bool decay = s.weight_decay != 0.0;
  // (first, decay, nesterov): eight instantiations of one body.
  if (s.first_step) {
    if (decay) {
      return s.nesterov ? sgd_typed<T, true, true, true>(n, in, out, s)
                        : sgd_typed<T, true, true, false>(n, in, out, s);
    }
    return s.nesterov ? sgd_typed<T, true, false, true>(n, in, out, s)
                      : sgd_typed<T, true, false, false>(n, in, out, s);
  }
  if (decay) {
    return s.nesterov ? sgd_typed<T, false, true, true>(n, in, out, s)
                      : sgd_typed<T, false, true, false>(n, in, out, s);
  }
  return s.nesterov ? sgd_typed<T, false, false, true>(n, in, out, s)
                    : sgd_typed<T, false, false, false>(n, in, out, s);
}

}  // namespace

void sgd_update_span(c10::ScalarType dtype, int64_t n, const void* const* in, void* const* out,
                     const SgdScalars& s) {
  switch (dtype) {
    case c10::ScalarType::Float:
      return sgd_bools<float>(n, in, out, s);
    case c10::ScalarType::Double:
      return sgd_bools<double>(n, in, out, s);
    case c10::ScalarType::BFloat16:
      return sgd_bools<c10::BFloat16>(n, in, out, s);
    case c10::ScalarType::Half:
      return sgd_bools<c10::Half>(n, in, out, s);
    default:
      break;  // dtypes are checked before the kernels run
  }
}

}  // namespace CPU_CAPABILITY
}  // namespace torchopt_accel
