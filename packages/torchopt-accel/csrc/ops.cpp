// Schemas of the torchopt_accel ops and their device-independent bodies.
#include "ops.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <tuple>

#include <ATen/ATen.h>
#include <ATen/MemoryOverlap.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/GradMode.h>
#include <torch/csrc/autograd/variable.h>
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

SgdScalars make_sgd_scalars(double lr, double momentum, double dampening, double weight_decay,
                            bool nesterov, bool maximize, bool first_step) {
  const char* op = "torchopt_accel.sgd_update_";
  TORCH_CHECK(std::isfinite(lr) && lr >= 0.0, op, ": `lr` must be a finite number >= 0, got ", lr);
  TORCH_CHECK(std::isfinite(momentum) && momentum >= 0.0, op,
              ": `momentum` must be a finite number >= 0, got ", momentum);
  TORCH_CHECK(std::isfinite(dampening), op, ": `dampening` must be a finite number, got ",
              dampening);
  TORCH_CHECK(std::isfinite(weight_decay) && weight_decay >= 0.0, op,
              ": `weight_decay` must be a finite number >= 0, got ", weight_decay);
  TORCH_CHECK(!nesterov || (momentum > 0.0 && dampening == 0.0), op,
              ": `nesterov=True` requires `momentum` > 0 and `dampening` == 0 (as torch.optim.SGD), "
              "got momentum=", momentum, ", dampening=", dampening);
  SgdScalars s;
  s.neg_lr = -lr;
  s.momentum = momentum;
  s.grad_weight = 1.0 - dampening;
  s.sign = maximize ? -1.0 : 1.0;
  s.weight_decay = weight_decay;
  s.nesterov = nesterov;
  s.first_step = first_step;
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

// Across leaves: no written tensor may share memory with a tensor of another leaf (the same
// tensor twice in `grads`, a buffer that is a view of another leaf's gradient, ...), or the
// result would depend on the order the leaves are processed in. Compares the byte ranges the
// tensors span (sorted, one sweep), so interleaved views of one storage count as overlapping.
// Same-leaf pairs are left to check_writable, which looks at the elements themselves.
void check_across_leaves(const char* op, const std::vector<at::TensorList>& lists,
                         const std::vector<const char*>& names, size_t n_written) {
  struct Range {
    uintptr_t begin, end;
    size_t list, index;
  };
  std::vector<Range> ranges;
  for (size_t j = 0; j < lists.size(); ++j) {
    for (size_t i = 0; i < lists[j].size(); ++i) {
      const auto& t = lists[j][i];
      if (t.numel() == 0) continue;
      int64_t last = 0;  // offset of the last element, in elements
      for (int64_t d = 0; d < t.dim(); ++d) last += (t.size(d) - 1) * t.stride(d);
      const auto begin = reinterpret_cast<uintptr_t>(t.data_ptr());
      ranges.push_back({begin, begin + static_cast<uintptr_t>((last + 1) * t.element_size()),
                        j, i});
    }
  }
  std::sort(ranges.begin(), ranges.end(),
            [](const Range& a, const Range& b) {
              return std::tie(a.begin, a.list, a.index) < std::tie(b.begin, b.list, b.index);
            });
  const Range* any = nullptr;      // the range reaching furthest so far
  const Range* written = nullptr;  // the written range reaching furthest so far
  for (const auto& r : ranges) {
    const bool is_written = r.list < n_written;
    const Range* clash = nullptr;
    if (written != nullptr && r.begin < written->end) {
      clash = written;
    } else if (is_written && any != nullptr && r.begin < any->end) {
      clash = any;
    }
    if (clash != nullptr && clash->index != r.index) {
      TORCH_CHECK(false, op, ": `", names[clash->list], "[", clash->index, "]` and `",
                  names[r.list], "[", r.index, "]` share memory, and at least one of them is "
                  "written in place; every leaf needs its own tensors");
    }
    if (any == nullptr || r.end > any->end) any = &r;
    if (is_written && (written == nullptr || r.end > written->end)) written = &r;
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

void sgd_update_impl(at::TensorList grads, at::TensorList bufs, at::TensorList params, double lr,
                     double momentum, double dampening, double weight_decay, bool nesterov,
                     bool maximize, bool first_step, SgdRunner run) {
  const char* op = "torchopt_accel.sgd_update_";
  const auto s =
      make_sgd_scalars(lr, momentum, dampening, weight_decay, nesterov, maximize, first_step);
  const bool decay = weight_decay != 0.0;
  // The parameters are read only for the weight-decay term: an empty list is allowed (and then
  // required) when weight_decay == 0; a non-empty one is checked like the others either way.
  TORCH_CHECK(!decay || params.size() == grads.size(), op, ": `params` has ", params.size(),
              " tensors but `grads` has ", grads.size(),
              "; with weight_decay != 0 the parameters are read and must be leaf-aligned");
  std::vector<at::TensorList> lists{grads, bufs};
  std::vector<const char*> names{"grads", "bufs", "params"};
  if (!params.empty()) lists.push_back(params);
  check_lists(op, lists, names);
  if (grads.empty()) return;
  check_across_leaves(op, lists, names, 2);
  Plan plan = make_plan(grads[0], grads.size());
  for (size_t i = 0; i < grads.size(); ++i) {
    const at::Tensor p = params.empty() ? at::Tensor() : params[i];
    // Written first (grads, bufs), then the read-only parameter.
    std::vector<at::Tensor> checked{grads[i], bufs[i]};
    if (p.defined()) checked.push_back(p);
    check_writable(op, i, checked, names, 2);
    // The old buffer is not read on the first step, nor the parameter without weight decay.
    add_leaf(plan, {grads[i], first_step ? at::Tensor() : bufs[i], decay ? p : at::Tensor()},
             {grads[i], bufs[i]});
  }
  run(plan, s);
  finish(plan);
}

namespace {

// Autograd kernel of sgd_update_: the in-place update is not differentiable, so it refuses to
// run when autograd would have to record it (instead of silently producing a graph that ignores
// it), then runs the device kernel below autograd and bumps the version counters of the two
// written lists (so a later backward that saved them fails loudly, as for torch's in-place ops).
void sgd_update_autograd(at::TensorList grads, at::TensorList bufs, at::TensorList params,
                         double lr, double momentum, double dampening, double weight_decay,
                         bool nesterov, bool maximize, bool first_step) {
  if (c10::GradMode::is_enabled()) {
    auto refuse = [](at::TensorList ts, const char* name) {
      for (size_t i = 0; i < ts.size(); ++i) {
        TORCH_CHECK(!(ts[i].defined() && ts[i].requires_grad()),
                    "torchopt_accel.sgd_update_: `", name, "[", i,
                    "]` requires grad and grad mode is on; this in-place update is not "
                    "differentiable: call it under torch.no_grad() (as torch.optim does) or use "
                    "the out-of-place update");
      }
    };
    refuse(grads, "grads");
    refuse(bufs, "bufs");
    if (weight_decay != 0.0) refuse(params, "params");  // read only for the weight decay
  }
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("torchopt_accel::sgd_update_", "")
                             .typed<decltype(sgd_update_autograd)>();
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    op.call(grads, bufs, params, lr, momentum, dampening, weight_decay, nesterov, maximize,
            first_step);
  }
  for (const auto& t : grads) torch::autograd::impl::bump_version(t);
  for (const auto& t : bufs) torch::autograd::impl::bump_version(t);
}

}  // namespace

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
  m.def(
      "sgd_update_(Tensor(a!)[] grads, Tensor(b!)[] bufs, Tensor[] params, float lr, "
      "float momentum, float dampening, float weight_decay, bool nesterov, bool maximize, "
      "bool first_step) -> ()");
}

TORCH_LIBRARY_IMPL(torchopt_accel, Autograd, m) {
  m.impl("sgd_update_", &sgd_update_autograd);
}

}  // namespace torchopt_accel
