// Shared declarations of the in-place momentum-SGD update kernel (CPU and CUDA).
//
// sgd_update_ (per element, in the op-math type; one read of g, b (and p) and one write of b, g):
//   g' = (maximize ? -g : g) + weight_decay * p      (p is not read when weight_decay == 0)
//   b  = first_step ? g' : momentum * b + (1 - dampening) * g'
//   d  = nesterov ? g' + momentum * b : b
//   g  = -lr * d                                      (the gradient is overwritten by the update)
// This is torch.optim.SGD's step (and torchopt.sgd's chain: weight decay, trace, scale by -lr)
// up to the final p += g, which the caller applies (torchopt.apply_updates).
#pragma once

#include <cstdint>

#include <c10/core/ScalarType.h>

namespace torchopt_accel {

// Hyper-parameters of one call, validated and folded on the host in double.
struct SgdScalars {
  double neg_lr = 0.0;        // -lr
  double momentum = 0.0;      // factor on the old buffer (unused on the first step)
  double grad_weight = 1.0;   // 1 - dampening (unused on the first step)
  double sign = 1.0;          // -1 when maximizing
  double weight_decay = 0.0;  // L2 term added to the gradient; p is read only when != 0
  bool nesterov = false;
  bool first_step = false;
};

SgdScalars make_sgd_scalars(double lr, double momentum, double dampening, double weight_decay,
                            bool nesterov, bool maximize, bool first_step);

// Element kernel over dense spans of one dtype: in = {g, b, p}, out = {g', b'} (out aliases in:
// in place). in[1] is not read on the first step and in[2] only with weight decay (either may
// then be null).
using SgdSpanFn = void (*)(c10::ScalarType dtype, int64_t n, const void* const* in,
                           void* const* out, const SgdScalars& s);

#define TORCHOPT_ACCEL_DECLARE_SGD_CAPABILITY(NS)                                          \
  namespace NS {                                                                          \
  void sgd_update_span(c10::ScalarType dtype, int64_t n, const void* const* in,           \
                       void* const* out, const SgdScalars& s);                            \
  }

TORCHOPT_ACCEL_DECLARE_SGD_CAPABILITY(DEFAULT)
#ifdef TORCHOPT_ACCEL_HAVE_AVX2
TORCHOPT_ACCEL_DECLARE_SGD_CAPABILITY(AVX2)
#endif
#ifdef TORCHOPT_ACCEL_HAVE_AVX512
TORCHOPT_ACCEL_DECLARE_SGD_CAPABILITY(AVX512)
#endif

}  // namespace torchopt_accel
