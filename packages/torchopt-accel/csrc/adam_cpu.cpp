// CPU implementation of the torchopt_accel ops (Adam and sgd_update_): the leaves of a call are
// cut into chunks that at::parallel_for spreads over the intra-op threads; each chunk runs the
// vectorised element kernel of the best CPU capability this machine (and ATEN_CPU_CAPABILITY) allows.
#include <algorithm>
#include <cstring>
#include <string>

#include <ATen/Version.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "ops.h"

namespace torchopt_accel {
namespace {

struct Kernels {
  SpanFn forward;
  SpanFn backward;
  SpanFn apply;
  SgdSpanFn sgd_update;
  const char* name;
};

Kernels select_kernels() {
  const std::string cap = at::get_cpu_capability();
#ifdef TORCHOPT_ACCEL_HAVE_AVX512
  if (cap == "AVX512") {
    return {AVX512::forward_span, AVX512::backward_span, AVX512::apply_span,
            AVX512::sgd_update_span, "AVX512"};
  }
#endif
#ifdef TORCHOPT_ACCEL_HAVE_AVX2
  if (cap == "AVX512" || cap == "AVX2") {
    return {AVX2::forward_span, AVX2::backward_span, AVX2::apply_span, AVX2::sgd_update_span,
            "AVX2"};
  }
#endif
  return {DEFAULT::forward_span, DEFAULT::backward_span, DEFAULT::apply_span,
          DEFAULT::sgd_update_span, "DEFAULT"};
}

const Kernels& kernels() {
  static const Kernels k = select_kernels();
  return k;
}

// Elements per work item: large enough to amortise the per-chunk cost, small enough to balance.
constexpr int64_t kChunk = 1 << 15;

struct Work {
  int32_t span;
  int64_t begin;
  int64_t end;
};

// Cuts every span of the plan into chunks of kChunk elements and runs
// `call(in, out, n)` on each (pointers advanced to the chunk) over at::parallel_for.
template <typename F>
void run_chunks(const Plan& plan, const F& call) {
  if (plan.spans.empty()) return;
  const int64_t elem = static_cast<int64_t>(c10::elementSize(plan.dtype));
  std::vector<Work> work;
  int64_t total = 0;
  for (size_t i = 0; i < plan.spans.size(); ++i) {
    const int64_t n = plan.spans[i].n;
    total += n;
    for (int64_t b = 0; b < n; b += kChunk) {
      work.push_back({static_cast<int32_t>(i), b, std::min(n, b + kChunk)});
    }
  }
  auto body = [&](int64_t lo, int64_t hi) {
    for (int64_t w = lo; w < hi; ++w) {
      const Work& item = work[w];
      const Span& sp = plan.spans[item.span];
      const void* in[6];
      void* out[3];
      const int64_t off = item.begin * elem;
      for (int j = 0; j < 6; ++j) {
        in[j] = sp.in[j] ? static_cast<const char*>(sp.in[j]) + off : nullptr;
      }
      for (int k = 0; k < 3; ++k) {
        out[k] = sp.out[k] ? static_cast<char*>(sp.out[k]) + off : nullptr;
      }
      call(in, out, item.end - item.begin);
    }
  };
  // Small calls stay on the calling thread: waking the pool costs more than it saves.
  const int64_t grain = total < 4 * kChunk ? static_cast<int64_t>(work.size()) : 1;
  at::parallel_for(0, static_cast<int64_t>(work.size()), grain, body);
}

void run_cpu(const Plan& plan, Kind kind, const AdamScalars& s) {
  const SpanFn fn = kind == Kind::Forward    ? kernels().forward
                    : kind == Kind::Backward ? kernels().backward
                                             : kernels().apply;
  run_chunks(plan, [&](const void* const* in, void* const* out, int64_t n) {
    fn(plan.dtype, n, in, out, s);
  });
}

void run_sgd_cpu(const Plan& plan, const SgdScalars& s) {
  const SgdSpanFn fn = kernels().sgd_update;
  run_chunks(plan, [&](const void* const* in, void* const* out, int64_t n) {
    fn(plan.dtype, n, in, out, s);
  });
}

void adam_step_cpu(at::TensorList updates, at::TensorList mu, at::TensorList nu, double b1,
                   double b2, double eps, double eps_root, int64_t count) {
  adam_step_impl(updates, mu, nu, b1, b2, eps, eps_root, count, run_cpu);
}

Triple adam_forward_cpu(at::TensorList updates, at::TensorList mu, at::TensorList nu, double b1,
                        double b2, double eps, double eps_root, int64_t count) {
  return adam_forward_impl(updates, mu, nu, b1, b2, eps, eps_root, count, run_cpu);
}

Triple adam_backward_cpu(at::TensorList grad_updates, at::TensorList grad_mu,
                         at::TensorList grad_nu, at::TensorList updates, at::TensorList mu,
                         at::TensorList nu, double b1, double b2, double eps, double eps_root,
                         int64_t count) {
  return adam_backward_impl(grad_updates, grad_mu, grad_nu, updates, mu, nu, b1, b2, eps,
                            eps_root, count, run_cpu);
}

void adam_apply_cpu(at::TensorList params, at::TensorList grads, at::TensorList mu,
                    at::TensorList nu, double lr, double b1, double b2, double eps,
                    double eps_root, int64_t count, double weight_decay, bool decoupled,
                    bool maximize) {
  adam_apply_impl(params, grads, mu, nu, lr, b1, b2, eps, eps_root, count, weight_decay,
                  decoupled, maximize, run_cpu);
}

void sgd_update_cpu(at::TensorList grads, at::TensorList bufs, at::TensorList params, double lr,
                    double momentum, double dampening, double weight_decay, bool nesterov,
                    bool maximize, bool first_step) {
  sgd_update_impl(grads, bufs, params, lr, momentum, dampening, weight_decay, nesterov, maximize,
                  first_step, run_sgd_cpu);
}

}  // namespace

const char* cpu_kernel_capability() { return kernels().name; }

const char* cpu_kernel_capabilities_compiled() {
  return "DEFAULT"
#ifdef TORCHOPT_ACCEL_HAVE_AVX2
         ",AVX2"
#endif
#ifdef TORCHOPT_ACCEL_HAVE_AVX512
         ",AVX512"
#endif
      ;
}

TORCH_LIBRARY_IMPL(torchopt_accel, CPU, m) {
  m.impl("adam_step_", &adam_step_cpu);
  m.impl("adam_forward", &adam_forward_cpu);
  m.impl("adam_backward", &adam_backward_cpu);
  m.impl("adam_apply_", &adam_apply_cpu);
  m.impl("sgd_update_", &sgd_update_cpu);
}

}  // namespace torchopt_accel
