// Device-independent bodies of the torchopt_accel ops: argument checks, output allocation and
// the "plan" (one dense span per leaf), parameterised by a device runner.
#pragma once

#include <tuple>
#include <vector>

#include <ATen/core/Tensor.h>

#include "adam.h"
#include "sgd.h"

namespace torchopt_accel {

// One leaf's worth of work: raw pointers into dense memory of `n` elements.
struct Span {
  const void* in[6];
  void* out[3];
  int64_t n;
};

struct Plan {
  std::vector<Span> spans;
  c10::ScalarType dtype = c10::ScalarType::Float;
  c10::Device device = c10::Device(c10::DeviceType::CPU);
  // (destination, computed) pairs to copy after the kernels ran (non-dense or mixed strides).
  std::vector<std::pair<at::Tensor, at::Tensor>> copy_back;
  // Contiguous copies of inputs that the spans point into.
  std::vector<at::Tensor> keep_alive;
};

enum class Kind { Forward, Backward, Apply };

// Inputs read per span: forward {g, m, v}; backward {gu, gm, gv, g, m, v}; apply {p, g, m, v}.
constexpr int n_inputs(Kind kind) {
  return kind == Kind::Forward ? 3 : kind == Kind::Backward ? 6 : 4;
}

// Runs every span of the plan on the device.
using Runner = void (*)(const Plan& plan, Kind kind, const AdamScalars& s);

// Runs every span of an sgd_update_ plan (in = {g, b, p}, out = {g, b}) on the device.
using SgdRunner = void (*)(const Plan& plan, const SgdScalars& s);

using TensorVec = std::vector<at::Tensor>;
using Triple = std::tuple<TensorVec, TensorVec, TensorVec>;

void adam_step_impl(at::TensorList updates, at::TensorList mu, at::TensorList nu, double b1,
                    double b2, double eps, double eps_root, int64_t count, Runner run);

Triple adam_forward_impl(at::TensorList updates, at::TensorList mu, at::TensorList nu, double b1,
                         double b2, double eps, double eps_root, int64_t count, Runner run);

Triple adam_backward_impl(at::TensorList grad_updates, at::TensorList grad_mu,
                          at::TensorList grad_nu, at::TensorList updates, at::TensorList mu,
                          at::TensorList nu, double b1, double b2, double eps, double eps_root,
                          int64_t count, Runner run);

void adam_apply_impl(at::TensorList params, at::TensorList grads, at::TensorList mu,
                     at::TensorList nu, double lr, double b1, double b2, double eps,
                     double eps_root, int64_t count, double weight_decay, bool decoupled,
                     bool maximize, Runner run);

void sgd_update_impl(at::TensorList grads, at::TensorList bufs, at::TensorList params, double lr,
                     double momentum, double dampening, double weight_decay, bool nesterov,
                     bool maximize, bool first_step, SgdRunner run);

}  // namespace torchopt_accel
