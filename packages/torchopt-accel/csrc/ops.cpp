// Schemas of the torchopt_accel ops and their device-independent bodies.
#include "ops.h"

#include <cmath>
#include <string>

#include <ATen/ATen.h>
#include <ATen/MemoryOverlap.h>
#include <torch/library.h>

namespace torchopt_accel {

AdamScalars make_scalars(double b1, double b2, double eps, double eps_root, int64_t count) {
  TORCH_CHECK(count >= 1, "torchopt_accel: `count` must be an integer >= 1 (the step number), got ",
              count);
  TORCH_CHECK(b1 >= 0.0 && b1 < 1.0, "torchopt_accel: `b1` must be in [0, 1), got ", b1);
  TORCH_CHECK(b2 >= 0.0 && b2 < 1.0, "torchopt_accel: `b2` must be in [0, 1), got ", b2);
  TORCH_CHECK(eps >= 0.0, "torchopt_accel: `eps` must be >= 0, got ", eps);
  TORCH_CHECK(eps_root >= 0.0, "torchopt_accel: `eps_root` must be >= 0, got ", eps_root);
  AdamScalars s;
  s.b1 = b1;
  s.b2 = b2;
  s.eps = eps;
  s.eps_root = eps_root;
  s.one_minus_b1 = 1.0 - b1;
  s.one_minus_b2 = 1.0 - b2;
  s.inv_bc1 = 1.0 / (1.0 - std::pow(b1, static_cast<double>(count)));
  s.inv_bc2 = 1.0 / (1.0 - std::pow(b2, static_cast<double>(count)));
  return s;
}

AdamScalars make_apply_scalars(double lr, double b1, double b2, double eps, double eps_root,
                               int64_t count, double weight_decay, bool decoupled,
                               bool maximize) {
  TORCH_CHECK(std::isfinite(lr) && lr >= 0.0,
              "torchopt_accel.adam_apply_: `lr` must be a finite number >= 0, got ", lr);
  TORCH_CHECK(std::isfinite(weight_decay) && weight_decay >= 0.0,
              "torchopt_accel.adam_apply_: `weight_decay` must be a finite number >= 0, got ",
              weight_decay);
  AdamScalars s = make_scalars(b1, b2, eps, eps_root, count);
  s.sign = maximize ? -1.0 : 1.0;
  s.coupled_wd = decoupled ? 0.0 : weight_decay;
  s.decay = decoupled ? 1.0 - lr * weight_decay : 1.0;
  // As torch.optim.Adam: step_size = lr / (1 - b1^t), in double.
  s.step_size = lr / (1.0 - std::pow(b1, static_cast<double>(count)));
  return s;
}

namespace {

bool supported_dtype(c10::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kBFloat16 || t == at::kHalf;
}

// Checks that `lists` (named by `names`) are leaf-aligned: same length, and per leaf the same
// shape, dtype and device; one device and one dtype for the whole call.
void check_lists(const char* op, const std::vector<at::TensorList>& lists,
                 const std::vector<const char*>& names) {
  const auto n = lists[0].size();
  for (size_t j = 1; j < lists.size(); ++j) {
    TORCH_CHECK(lists[j].size() == n, op, ": `", names[j], "` has ", lists[j].size(),
                " tensors but `", names[0], "` has ", n, "; the lists must be leaf-aligned");
  }
  if (n == 0) return;
  const auto& first = lists[0][0];
  TORCH_CHECK(supported_dtype(first.scalar_type()), op,
              ": expected float32, float64, bfloat16 or float16 tensors, got ",
              first.scalar_type());
  for (size_t i = 0; i < n; ++i) {
    const auto& ref = lists[0][i];
    for (size_t j = 0; j < lists.size(); ++j) {
      const auto& t = lists[j][i];
      TORCH_CHECK(t.defined(), op, ": `", names[j], "[", i, "]` is undefined");
      TORCH_CHECK(t.device() == first.device(), op, ": every tensor must be on one device (",
                  first.device(), "), but `", names[j], "[", i, "]` is on ", t.device(),
                  "; group the leaves by device");
      TORCH_CHECK(t.scalar_type() == first.scalar_type(), op,
                  ": every tensor must have one dtype (", first.scalar_type(), "), but `",
                  names[j], "[", i, "]` is ", t.scalar_type(), "; group the leaves by dtype");
      TORCH_CHECK(t.sizes() == ref.sizes(), op, ": `", names[j], "[", i, "]` has shape ",
                  t.sizes(), " but `", names[0], "[", i, "]` has shape ", ref.sizes());
    }
  }
}

// The written tensors of a leaf must own their elements (no expanded / self-overlapping
// views) and share no memory with each other or with the gradient.
void check_writable(const char* op, size_t i, const std::vector<at::Tensor>& ts,
                    const std::vector<const char*>& names, size_t n_written) {
  for (size_t j = 0; j < n_written; ++j) {
    TORCH_CHECK(at::has_internal_overlap(ts[j]) != at::MemOverlap::Yes, op, ": `", names[j], "[",
                i, "]` is written in place but several of its elements share memory (an "
                "expanded view?); pass a tensor that owns its elements");
  }
  for (size_t j = 0; j < n_written; ++j) {
    for (size_t k = 0; k < ts.size(); ++k) {
      if (k == j || (k < n_written && k < j)) continue;
      const auto status = at::get_overlap_status(ts[j], ts[k]);
      TORCH_CHECK(status != at::MemOverlapStatus::Full && status != at::MemOverlapStatus::Partial,
                  op, ": `", names[j], "[", i, "]` and `", names[k], "[", i,
                  "]` share memory; every list needs its own tensors");
    }
  }
}

// A leaf can be processed in place in memory when every tensor is dense with the same strides.
bool same_dense_layout(const std::vector<at::Tensor>& ts) {
  const at::Tensor* ref = nullptr;
  for (const auto& t : ts) {
    if (!t.defined()) continue;
    if (!t.is_non_overlapping_and_dense()) return false;
    if (ref == nullptr) {
      ref = &t;
    } else if (t.strides() != ref->strides()) {
      return false;
    }
  }
  return true;
}

// Builds the spans of one leaf: `ins` (undefined = absent, read as zero) and `outs` (an output
// may be the same tensor as an input: in-place).
void add_leaf(Plan& plan, const std::vector<at::Tensor>& ins, const std::vector<at::Tensor>& outs) {
  int64_t n = -1;
  for (const auto& t : ins) {
    if (t.defined()) {
      n = t.numel();
      break;
    }
  }
  if (n <= 0) return;
  std::vector<at::Tensor> all(ins);
  all.insert(all.end(), outs.begin(), outs.end());
  Span span{};
  span.n = n;
  if (same_dense_layout(all)) {
    for (size_t j = 0; j < ins.size(); ++j) span.in[j] = ins[j].defined() ? ins[j].data_ptr() : nullptr;
    for (size_t k = 0; k < outs.size(); ++k) span.out[k] = outs[k].data_ptr();
    plan.spans.push_back(span);
    return;
  }
  // General layouts: contiguous copies in, contiguous results copied back out.
  std::vector<at::Tensor> ins_c(ins.size());
  for (size_t j = 0; j < ins.size(); ++j) {
    if (ins[j].defined()) {
      ins_c[j] = ins[j].contiguous();
      plan.keep_alive.push_back(ins_c[j]);
    }
    span.in[j] = ins[j].defined() ? ins_c[j].data_ptr() : nullptr;
  }
  for (size_t k = 0; k < outs.size(); ++k) {
    at::Tensor result;
    for (size_t j = 0; j < ins.size(); ++j) {
      if (ins[j].defined() && ins[j].is_same(outs[k])) result = ins_c[j];  // in-place leaf
    }
    if (!result.defined()) {
      result = outs[k].is_contiguous() ? outs[k] : at::empty(outs[k].sizes(), outs[k].options());
    }
    span.out[k] = result.data_ptr();
    if (!result.is_same(outs[k])) plan.copy_back.emplace_back(outs[k], result);
  }
  plan.spans.push_back(span);
}

void finish(const Plan& plan) {
  for (const auto& [dst, src] : plan.copy_back) dst.copy_(src);
}

TensorVec empty_like_all(at::TensorList ts) {
  TensorVec out;
  out.reserve(ts.size());
  for (const auto& t : ts) out.push_back(at::empty_like(t));
  return out;
}

// An empty plan for `leaves` leaves of the dtype and device of `first`.
Plan make_plan(const at::Tensor& first, size_t leaves) {
  Plan plan;
  plan.dtype = first.scalar_type();
  plan.device = first.device();
  plan.spans.reserve(leaves);
  return plan;
}

}  // namespace

void adam_step_impl(at::TensorList updates, at::TensorList mu, at::TensorList nu, double b1,
                    double b2, double eps, double eps_root, int64_t count, Runner run) {
  const auto s = make_scalars(b1, b2, eps, eps_root, count);
  check_lists("torchopt_accel.adam_step_", {updates, mu, nu}, {"updates", "mu", "nu"});
  if (updates.empty()) return;
  Plan plan = make_plan(updates[0], updates.size());
  for (size_t i = 0; i < updates.size(); ++i) {
    add_leaf(plan, {updates[i], mu[i], nu[i]}, {updates[i], mu[i], nu[i]});
  }
  run(plan, Kind::Forward, s);
  finish(plan);
}

Triple adam_forward_impl(at::TensorList updates, at::TensorList mu, at::TensorList nu, double b1,
                         double b2, double eps, double eps_root, int64_t count, Runner run) {
  const auto s = make_scalars(b1, b2, eps, eps_root, count);
  check_lists("torchopt_accel.adam_forward", {updates, mu, nu}, {"updates", "mu", "nu"});
  Triple result{empty_like_all(updates), empty_like_all(mu), empty_like_all(nu)};
  if (updates.empty()) return result;
  auto& [u, m, v] = result;
  Plan plan = make_plan(updates[0], updates.size());
  for (size_t i = 0; i < updates.size(); ++i) {
    add_leaf(plan, {updates[i], mu[i], nu[i]}, {u[i], m[i], v[i]});
  }
  run(plan, Kind::Forward, s);
  finish(plan);
  return result;
}

Triple adam_backward_impl(at::TensorList grad_updates, at::TensorList grad_mu,
                          at::TensorList grad_nu, at::TensorList updates, at::TensorList mu,
                          at::TensorList nu, double b1, double b2, double eps, double eps_root,
                          int64_t count, Runner run) {
  const auto s = make_scalars(b1, b2, eps, eps_root, count);
  // Empty grad_mu / grad_nu lists mean "zero cotangent" for every leaf.
  std::vector<at::TensorList> lists{grad_updates, updates, mu, nu};
  std::vector<const char*> names{"grad_updates", "updates", "mu", "nu"};
  if (!grad_mu.empty()) {
    lists.push_back(grad_mu);
    names.push_back("grad_mu");
  }
  if (!grad_nu.empty()) {
    lists.push_back(grad_nu);
    names.push_back("grad_nu");
  }
  check_lists("torchopt_accel.adam_backward", lists, names);
  Triple result{empty_like_all(updates), empty_like_all(mu), empty_like_all(nu)};
  if (updates.empty()) return result;
  auto& [dg, dm, dv] = result;
  Plan plan = make_plan(updates[0], updates.size());
  for (size_t i = 0; i < updates.size(); ++i) {
    add_leaf(plan,
             {grad_updates[i], grad_mu.empty() ? at::Tensor() : grad_mu[i],
              grad_nu.empty() ? at::Tensor() : grad_nu[i], updates[i], mu[i], nu[i]},
             {dg[i], dm[i], dv[i]});
  }
  run(plan, Kind::Backward, s);
  finish(plan);
  return result;
}

void adam_apply_impl(at::TensorList params, at::TensorList grads, at::TensorList mu,
                     at::TensorList nu, double lr, double b1, double b2, double eps,
                     double eps_root, int64_t count, double weight_decay, bool decoupled,
                     bool maximize, Runner run) {
  const char* op = "torchopt_accel.adam_apply_";
  const auto s =
      make_apply_scalars(lr, b1, b2, eps, eps_root, count, weight_decay, decoupled, maximize);
  check_lists(op, {params, grads, mu, nu}, {"params", "grads", "mu", "nu"});
  if (params.empty()) return;
  Plan plan = make_plan(params[0], params.size());
  for (size_t i = 0; i < params.size(); ++i) {
    // Written first (params, mu, nu), then the read-only gradient.
    check_writable(op, i, {params[i], mu[i], nu[i], grads[i]}, {"params", "mu", "nu", "grads"},
                   3);
    add_leaf(plan, {params[i], grads[i], mu[i], nu[i]}, {params[i], mu[i], nu[i]});
  }
  run(plan, Kind::Apply, s);
  finish(plan);
}

TORCH_LIBRARY(torchopt_accel, m) {
  m.def(
      "adam_step_(Tensor(a!)[] updates, Tensor(b!)[] mu, Tensor(c!)[] nu, float b1, float b2, "
      "float eps, float eps_root, int count) -> ()");
  m.def(
      "adam_forward(Tensor[] updates, Tensor[] mu, Tensor[] nu, float b1, float b2, float eps, "
      "float eps_root, int count) -> (Tensor[], Tensor[], Tensor[])");
  m.def(
      "adam_backward(Tensor[] grad_updates, Tensor[] grad_mu, Tensor[] grad_nu, "
      "Tensor[] updates, Tensor[] mu, Tensor[] nu, float b1, float b2, float eps, "
      "float eps_root, int count) -> (Tensor[], Tensor[], Tensor[])");
  m.def(
      "adam_apply_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] mu, Tensor(c!)[] nu, "
      "float lr, float b1, float b2, float eps, float eps_root, int count, "
      "float weight_decay, bool decoupled, bool maximize) -> ()");
}

}  // namespace torchopt_accel
