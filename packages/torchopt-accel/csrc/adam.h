// Shared declarations of the fused Adam kernels (CPU and CUDA).
//
// Forward (one Adam step, per element, in the op-math type):
//   m' = b1 m + (1 - b1) g
//   v' = b2 v + (1 - b2) g^2
//   u  = (m' / bc1) / (sqrt(v' / bc2 + eps_root) + eps),  bc1 = 1 - b1^t, bc2 = 1 - b2^t
// Backward (exact; s = sqrt(v'/bc2 + eps_root), d = s + eps):
//   Gm = gm' + gu / (bc1 d)
//   Gv = gv' - gu m' / (2 bc1 bc2 s d^2)   (the second term is 0 where s = 0: v' = 0 and
//                                           eps_root = 0, an entry whose gradient was always 0)
//   dg = (1 - b1) Gm + 2 (1 - b2) g Gv,   dm = b1 Gm,   dv = b2 Gv
// Apply (one full torch.optim.Adam / AdamW step on the parameters, gradient left untouched):
//   g' = sign g (+ wd p if coupled),  p <- decay p  (decay = 1 - lr wd if decoupled, else 1)
//   m' = b1 m + (1 - b1) g',  v' = b2 v + (1 - b2) g'^2
//   p <- p - (lr / bc1) m' / (sqrt(v' / bc2 + eps_root) + eps)
#pragma once

#include <cstdint>

#include <c10/core/ScalarType.h>

namespace torchopt_accel {

// Hyper-parameters with the bias corrections folded in, computed once in double on the host.
struct AdamScalars {
  double b1, b2, eps, eps_root;
  double one_minus_b1, one_minus_b2;
  double inv_bc1, inv_bc2;
  // Apply only: sign of the gradient (-1 when maximizing), coupled (L2) weight decay added to
  // the gradient, decoupled decay factor of the parameter, and the step size lr / bc1.
  double sign = 1.0, coupled_wd = 0.0, decay = 1.0, step_size = 0.0;
};

AdamScalars make_scalars(double b1, double b2, double eps, double eps_root, int64_t count);

// make_scalars plus the parameter-update terms of adam_apply_ (lr, weight decay, maximize).
AdamScalars make_apply_scalars(double lr, double b1, double b2, double eps, double eps_root,
                               int64_t count, double weight_decay, bool decoupled,
                               bool maximize);

// Element kernels over dense spans of one dtype. `in`/`out` hold raw pointers:
//   forward:  in = {g, m, v},              out = {u, m', v'}   (out may alias in: in-place step)
//   backward: in = {gu, gm, gv, g, m, v},  out = {dg, dm, dv}  (gm / gv may be null: zero)
//   apply:    in = {p, g, m, v},           out = {p', m', v'}  (out aliases in: in place)
using SpanFn = void (*)(c10::ScalarType dtype, int64_t n, const void* const* in,
                        void* const* out, const AdamScalars& s);

// One definition per CPU capability (the same source compiled with different flags).
#define TORCHOPT_ACCEL_DECLARE_CAPABILITY(NS)                                                 \
  namespace NS {                                                                             \
  void forward_span(c10::ScalarType dtype, int64_t n, const void* const* in, void* const* out, \
                    const AdamScalars& s);                                                   \
  void backward_span(c10::ScalarType dtype, int64_t n, const void* const* in,               \
                     void* const* out, const AdamScalars& s);                                \
  void apply_span(c10::ScalarType dtype, int64_t n, const void* const* in, void* const* out,   \
                  const AdamScalars& s);                                                     \
  }

TORCHOPT_ACCEL_DECLARE_CAPABILITY(DEFAULT)
#ifdef TORCHOPT_ACCEL_HAVE_AVX2
TORCHOPT_ACCEL_DECLARE_CAPABILITY(AVX2)
#endif
#ifdef TORCHOPT_ACCEL_HAVE_AVX512
TORCHOPT_ACCEL_DECLARE_CAPABILITY(AVX512)
#endif

// Name of the CPU kernel variant chosen at run time ("AVX512", "AVX2" or "DEFAULT").
const char* cpu_kernel_capability();
// Names of the CPU kernel variants compiled in.
const char* cpu_kernel_capabilities_compiled();

}  // namespace torchopt_accel
