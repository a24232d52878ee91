// CUDA implementation of the torchopt_accel ops: one multi-tensor launch per call on the current
// stream. Every leaf is cut into chunks of kChunk elements, one thread block per chunk; a small
// metadata table (span pointers, block -> (span, begin)) is copied to the device with the
// launch, so every element of every size is processed (no tail is skipped) in one kernel.
// adam_apply_ reads p, g, m, v and writes p, m, v in the same single pass.
#include <algorithm>
#include <optional>
#include <vector>

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include "ops.h"

namespace torchopt_accel {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kChunk = kThreads * 16;
constexpr int kMetaWords = 10;  // 6 inputs, 3 outputs, n

template <typename T>
using opmath_t = std::conditional_t<std::is_same_v<T, double>, double, float>;

__device__ __forceinline__ float dev_sqrt(float x) { return ::sqrtf(x); }
__device__ __forceinline__ double dev_sqrt(double x) { return ::sqrt(x); }

template <typename O>
struct Params {
  O b1, b2, c1, c2, ibc1, ibc2, eps, eps_root, two_c2, half_ibc12;
  O sign, coupled_wd, decay, step_size;  // adam_apply_ only
};

template <typename T, typename O>
__device__ __forceinline__ O load(const T* p, int64_t i) {
  return p == nullptr ? O(0) : static_cast<O>(p[i]);
}

template <typename T, Kind kKind>
__global__ void __launch_bounds__(kThreads)
    adam_kernel(const int64_t* __restrict__ meta, int64_t n_spans, int64_t n_blocks,
                Params<opmath_t<T>> p) {
  using O = opmath_t<T>;
  const int64_t block = blockIdx.x;
  const int64_t span = meta[n_spans * kMetaWords + block];
  const int64_t begin = meta[n_spans * kMetaWords + n_blocks + block];
  const int64_t* sm = meta + span * kMetaWords;
  const int64_t n = sm[9];
  const int64_t end = begin + kChunk < n ? begin + kChunk : n;
  if constexpr (kKind == Kind::Apply) {
    const T* p_in = reinterpret_cast<const T*>(sm[0]);
    T* p_out = reinterpret_cast<T*>(sm[6]);  // the same memory as p_in: in place
    const T* g_in = reinterpret_cast<const T*>(sm[1]);
    const T* m_in = reinterpret_cast<const T*>(sm[2]);
    const T* v_in = reinterpret_cast<const T*>(sm[3]);
    T* m_out = reinterpret_cast<T*>(sm[7]);
    T* v_out = reinterpret_cast<T*>(sm[8]);
    const bool coupled = p.coupled_wd != O(0);
#pragma unroll 4
    for (int64_t i = begin + threadIdx.x; i < end; i += kThreads) {
      const O param = static_cast<O>(p_in[i]);
      O g = p.sign * static_cast<O>(g_in[i]);
      if (coupled) g += p.coupled_wd * param;
      const O m = p.b1 * static_cast<O>(m_in[i]) + p.c1 * g;
      const O v = p.b2 * static_cast<O>(v_in[i]) + p.c2 * (g * g);
      const O denom = dev_sqrt(v * p.ibc2 + p.eps_root) + p.eps;
      p_out[i] = static_cast<T>(param * p.decay - p.step_size * (m / denom));
      m_out[i] = static_cast<T>(m);
      v_out[i] = static_cast<T>(v);
    }
  } else if constexpr (kKind == Kind::Forward) {
    const T* g_in = reinterpret_cast<const T*>(sm[0]);
    const T* m_in = reinterpret_cast<const T*>(sm[1]);
    const T* v_in = reinterpret_cast<const T*>(sm[2]);
    T* u_out = reinterpret_cast<T*>(sm[6]);
    T* m_out = reinterpret_cast<T*>(sm[7]);
    T* v_out = reinterpret_cast<T*>(sm[8]);
#pragma unroll 4
    for (int64_t i = begin + threadIdx.x; i < end; i += kThreads) {
      const O g = static_cast<O>(g_in[i]);
      const O m = p.b1 * static_cast<O>(m_in[i]) + p.c1 * g;
      const O v = p.b2 * static_cast<O>(v_in[i]) + p.c2 * (g * g);
      const O denom = dev_sqrt(v * p.ibc2 + p.eps_root) + p.eps;
      u_out[i] = static_cast<T>((m * p.ibc1) / denom);
      m_out[i] = static_cast<T>(m);
      v_out[i] = static_cast<T>(v);
    }
  } else {
    const T* gu_in = reinterpret_cast<const T*>(sm[0]);
    const T* gm_in = reinterpret_cast<const T*>(sm[1]);
    const T* gv_in = reinterpret_cast<const T*>(sm[2]);
    const T* g_in = reinterpret_cast<const T*>(sm[3]);
    const T* m_in = reinterpret_cast<const T*>(sm[4]);
    const T* v_in = reinterpret_cast<const T*>(sm[5]);
    T* dg_out = reinterpret_cast<T*>(sm[6]);
    T* dm_out = reinterpret_cast<T*>(sm[7]);
    T* dv_out = reinterpret_cast<T*>(sm[8]);
#pragma unroll 4
    for (int64_t i = begin + threadIdx.x; i < end; i += kThreads) {
      const O gu = static_cast<O>(gu_in[i]);
      const O g = static_cast<O>(g_in[i]);
      const O m = p.b1 * static_cast<O>(m_in[i]) + p.c1 * g;
      const O v = p.b2 * static_cast<O>(v_in[i]) + p.c2 * (g * g);
      const O root = dev_sqrt(v * p.ibc2 + p.eps_root);
      const O denom = root + p.eps;
      const O gm = load<T, O>(gm_in, i) + gu * p.ibc1 / denom;
      const O chain = root > O(0) ? (gu * m * p.half_ibc12) / (root * denom * denom) : O(0);
      const O gv = load<T, O>(gv_in, i) - chain;  // 0, not 0/0, where s = 0 (see adam.h)
      dg_out[i] = static_cast<T>(p.c1 * gm + p.two_c2 * g * gv);
      dm_out[i] = static_cast<T>(p.b1 * gm);
      dv_out[i] = static_cast<T>(p.b2 * gv);
    }
  }
}

template <typename T>
void launch(const Plan& plan, Kind kind, const AdamScalars& s, c10::Device device) {
  using O = opmath_t<T>;
  const int64_t n_spans = static_cast<int64_t>(plan.spans.size());
  std::vector<int64_t> block_span, block_begin;
  for (int64_t i = 0; i < n_spans; ++i) {
    for (int64_t b = 0; b < plan.spans[i].n; b += kChunk) {
      block_span.push_back(i);
      block_begin.push_back(b);
    }
  }
  const int64_t n_blocks = static_cast<int64_t>(block_span.size());
  if (n_blocks == 0) return;
  auto host = at::empty({n_spans * kMetaWords + 2 * n_blocks},
                        at::TensorOptions().dtype(at::kLong).pinned_memory(true));
  int64_t* h = host.data_ptr<int64_t>();
  for (int64_t i = 0; i < n_spans; ++i) {
    const Span& sp = plan.spans[i];
    for (int j = 0; j < 6; ++j) h[i * kMetaWords + j] = reinterpret_cast<int64_t>(sp.in[j]);
    for (int k = 0; k < 3; ++k) h[i * kMetaWords + 6 + k] = reinterpret_cast<int64_t>(sp.out[k]);
    h[i * kMetaWords + 9] = sp.n;
  }
  std::copy(block_span.begin(), block_span.end(), h + n_spans * kMetaWords);
  std::copy(block_begin.begin(), block_begin.end(), h + n_spans * kMetaWords + n_blocks);
  // Pinned -> device on the current stream; the caching host allocator keeps `host` alive
  // until the copy has run.
  auto meta = host.to(device, /*non_blocking=*/true);
  Params<O> p{O(s.b1),   O(s.b2),  O(s.one_minus_b1), O(s.one_minus_b2),       O(s.inv_bc1),
              O(s.inv_bc2), O(s.eps), O(s.eps_root),   O(2.0 * s.one_minus_b2),
              O(0.5 * s.inv_bc1 * s.inv_bc2),
              O(s.sign),    O(s.coupled_wd), O(s.decay), O(s.step_size)};
  auto stream = c10::cuda::getCurrentCUDAStream(device.index());
  const int64_t* meta_ptr = meta.data_ptr<int64_t>();
  if (kind == Kind::Forward) {
    adam_kernel<T, Kind::Forward><<<n_blocks, kThreads, 0, stream>>>(meta_ptr, n_spans, n_blocks,
                                                                      p);
  } else if (kind == Kind::Backward) {
    adam_kernel<T, Kind::Backward><<<n_blocks, kThreads, 0, stream>>>(meta_ptr, n_spans,
                                                                       n_blocks, p);
  } else {
    adam_kernel<T, Kind::Apply><<<n_blocks, kThreads, 0, stream>>>(meta_ptr, n_spans, n_blocks,
                                                                    p);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void run_cuda(const Plan& plan, Kind kind, const AdamScalars& s) {
  if (plan.spans.empty()) return;
  switch (plan.dtype) {
    case c10::ScalarType::Float:
      return launch<float>(plan, kind, s, plan.device);
    case c10::ScalarType::Double:
      return launch<double>(plan, kind, s, plan.device);
    case c10::ScalarType::BFloat16:
      return launch<c10::BFloat16>(plan, kind, s, plan.device);
    case c10::ScalarType::Half:
      return launch<c10::Half>(plan, kind, s, plan.device);
    default:
      TORCH_CHECK(false, "torchopt_accel: unsupported dtype ", plan.dtype);
  }
}

// Makes the device of the first tensor current (allocations and the launch happen there).
struct DeviceScope {
  std::optional<c10::cuda::CUDAGuard> guard;
  explicit DeviceScope(at::TensorList ts) {
    if (!ts.empty()) guard.emplace(ts[0].device());
  }
};

void adam_step_cuda(at::TensorList updates, at::TensorList mu, at::TensorList nu, double b1,
                    double b2, double eps, double eps_root, int64_t count) {
  DeviceScope scope(updates);
  adam_step_impl(updates, mu, nu, b1, b2, eps, eps_root, count, run_cuda);
}

Triple adam_forward_cuda(at::TensorList updates, at::TensorList mu, at::TensorList nu,
                         double b1, double b2, double eps, double eps_root, int64_t count) {
  DeviceScope scope(updates);
  return adam_forward_impl(updates, mu, nu, b1, b2, eps, eps_root, count, run_cuda);
}

Triple adam_backward_cuda(at::TensorList grad_updates, at::TensorList grad_mu,
                          at::TensorList grad_nu, at::TensorList updates, at::TensorList mu,
                          at::TensorList nu, double b1, double b2, double eps, double eps_root,
                          int64_t count) {
  DeviceScope scope(updates);
  return adam_backward_impl(grad_updates, grad_mu, grad_nu, updates, mu, nu, b1, b2, eps,
                            eps_root, count, run_cuda);
}

void adam_apply_cuda(at::TensorList params, at::TensorList grads, at::TensorList mu,
                     at::TensorList nu, double lr, double b1, double b2, double eps,
                     double eps_root, int64_t count, double weight_decay, bool decoupled,
                     bool maximize) {
  DeviceScope scope(params);
  adam_apply_impl(params, grads, mu, nu, lr, b1, b2, eps, eps_root, count, weight_decay,
                  decoupled, maximize, run_cuda);
}

}  // namespace

TORCH_LIBRARY_IMPL(torchopt_accel, CUDA, m) {
  m.impl("adam_step_", &adam_step_cuda);
  m.impl("adam_forward", &adam_forward_cuda);
  m.impl("adam_backward", &adam_backward_cuda);
  m.impl("adam_apply_", &adam_apply_cuda);
}

}  // namespace torchopt_accel
