// Shared declarations of the fused Adam kernels (CPU and CUDA).
//
// Forward (one Adam step, per element, in the op-math type):
//   m' = b1 m + (1 - b1) g
//   v' = b2 v + (1 - b2) g^2
//   u  = (m' / bc1) / (sqrt(v' / bc2 + eps_root) + eps),  bc1 = 1 - b1^t, bc2 = 1 - b2^t
// Backward (exact; s = sqrt(v'/bc2 + eps_root), d = s + eps):
//   Gm = gm' + gu / (bc1 d)
//   Gv = gv' - gu m' / (2 bc1 bc2 s d^2)
//   dg = (1 - b1) Gm + 2 (1 - b2) g Gv,   dm = b1 Gm,   dv = b2 Gv
#pragma once

#include <cstdint>

#include <c10/core/ScalarType.h>

namespace torchopt_accel {

// Hyper-parameters with the bias corrections folded in, computed once in double on the host.
struct AdamScalars {
  double b1, b2, eps, eps_root;
  double one_minus_b1, one_minus_b2;
  double inv_bc1, inv_bc2;
};

AdamScalars make_scalars(double b1, double b2, double eps, double eps_root, int64_t count);

// Element kernels over dense spans of one dtype. `in`/`out` hold raw pointers:
//   forward:  in = {g, m, v},              out = {u, m', v'}   (out may alias in: in-place step)
//   backward: in = {gu, gm, gv, g, m, v},  out = {dg, dm, dv}  (gm / gv may be null: zero)
using SpanFn = void (*)(c10::ScalarType dtype, int64_t n, const void* const* in,
                        void* const* out, const AdamScalars& s);

// One definition per CPU capability (the same source compiled with different flags).
#define TORCHOPT_ACCEL_DECLARE_CAPABILITY(NS)                                                 \
  namespace NS {                                                                             \
  void forward_span(c10::ScalarType dtype, int64_t n, const void* const* in, void* const* out, \
                    const AdamScalars& s);                                                   \
  void backward_span(c10::ScalarType dtype, int64_t n, const void* const* in,               \
                     void* const* out, const AdamScalars& s);                                \
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
