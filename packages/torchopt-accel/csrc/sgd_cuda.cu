// CUDA implementation of sgd_update_ (sgd.h), written to the pattern of adam_cuda.cu: one
// multi-tensor launch per call on the current stream. Every leaf is cut into chunks of kChunk
// elements, one thread block per chunk; a small metadata table (span pointers and sizes,
// block -> (span, begin)) is copied to the device with the launch, so every element of every
// size is processed in one kernel. Each element reads g, b (not on the first step) and p (only
// with weight decay) once and writes b and g once.
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
constexpr int kMetaWords = 6;  // g, b, p (inputs), g', b' (outputs), n

template <typename T>
using opmath_t = std::conditional_t<std::is_same_v<T, double>, double, float>;

template <typename O>
struct SgdParams {
  O neg_lr, momentum, grad_weight, sign, weight_decay;
};

template <typename T, bool kFirst, bool kDecay, bool kNesterov>
__global__ void __launch_bounds__(kThreads)
    sgd_kernel(const int64_t* __restrict__ meta, int64_t n_spans, int64_t n_blocks,
               SgdParams<opmath_t<T>> s) {
  using O = opmath_t<T>;
  const int64_t block = blockIdx.x;
  const int64_t span = meta[n_spans * kMetaWords + block];
  const int64_t begin = meta[n_spans * kMetaWords + n_blocks + block];
  const int64_t* sm = meta + span * kMetaWords;
  const int64_t n = sm[5];
  const int64_t end = begin + kChunk < n ? begin + kChunk : n;
  const T* g_in = reinterpret_cast<const T*>(sm[0]);
  const T* b_in = reinterpret_cast<const T*>(sm[1]);  // null on the first step
  const T* p_in = reinterpret_cast<const T*>(sm[2]);  // null without weight decay
  T* g_out = reinterpret_cast<T*>(sm[3]);  // the same memory as g_in: in place
  T* b_out = reinterpret_cast<T*>(sm[4]);
#pragma unroll 4
  for (int64_t i = begin + threadIdx.x; i < end; i += kThreads) {
    O g = s.sign * static_cast<O>(g_in[i]);
    if constexpr (kDecay) g += s.weight_decay * static_cast<O>(p_in[i]);
    O b;
    if constexpr (kFirst) {
      b = g;
    } else {
      b = s.momentum * static_cast<O>(b_in[i]) + s.grad_weight * g;
    }
    O d = b;
    if constexpr (kNesterov) d = g + s.momentum * b;
    b_out[i] = static_cast<T>(b);
    g_out[i] = static_cast<T>(s.neg_lr * d);
  }
}

template <typename T, bool kFirst, bool kDecay, bool kNesterov>
void launch_variant(const int64_t* meta, int64_t n_spans, int64_t n_blocks,
                    const SgdParams<opmath_t<T>>& p, cudaStream_t stream) {
  sgd_kernel<T, kFirst, kDecay, kNesterov>
      <<<n_blocks, kThreads, 0, stream>>>(meta, n_spans, n_blocks, p);
}

template <typename T>
void launch(const Plan& plan, const SgdScalars& s, c10::Device device) {
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
    int64_t* row = h + i * kMetaWords;
    for (int j = 0; j < 3; ++j) row[j] = reinterpret_cast<int64_t>(sp.in[j]);
    for (int k = 0; k < 2; ++k) row[3 + k] = reinterpret_cast<int64_t>(sp.out[k]);
    row[5] = sp.n;
  }
  std::copy(block_span.begin(), block_span.end(), h + n_spans * kMetaWords);
  std::copy(block_begin.begin(), block_begin.end(), h + n_spans * kMetaWords + n_blocks);
  // Pinned -> device on the current stream; the caching host allocator keeps `host` alive
  // until the copy has run.
  auto meta = host.to(device, /*non_blocking=*/true);
  const SgdParams<O> p{O(s.neg_lr), O(s.momentum), O(s.grad_weight), O(s.sign),
                       O(s.weight_decay)};
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream(device.index());
  const int64_t* m = meta.data_ptr<int64_t>();
  const bool decay = s.weight_decay != 0.0;
  if (s.first_step) {
    if (decay) {
      s.nesterov ? launch_variant<T, true, true, true>(m, n_spans, n_blocks, p, stream)
                 : launch_variant<T, true, true, false>(m, n_spans, n_blocks, p, stream);
    } else {
      s.nesterov ? launch_variant<T, true, false, true>(m, n_spans, n_blocks, p, stream)
                 : launch_variant<T, true, false, false>(m, n_spans, n_blocks, p, stream);
    }
  } else if (decay) {
    s.nesterov ? launch_variant<T, false, true, true>(m, n_spans, n_blocks, p, stream)
               : launch_variant<T, false, true, false>(m, n_spans, n_blocks, p, stream);
  } else {
    s.nesterov ? launch_variant<T, false, false, true>(m, n_spans, n_blocks, p, stream)
               : launch_variant<T, false, false, false>(m, n_spans, n_blocks, p, stream);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void run_sgd_cuda(const Plan& plan, const SgdScalars& s) {
  if (plan.spans.empty()) return;
  switch (plan.dtype) {
    case c10::ScalarType::Float:
      return launch<float>(plan, s, plan.device);
    case c10::ScalarType::Double:
      return launch<double>(plan, s, plan.device);
    case c10::ScalarType::BFloat16:
      return launch<c10::BFloat16>(plan, s, plan.device);
    case c10::ScalarType::Half:
      return launch<c10::Half>(plan, s, plan.device);
    default:
      TORCH_CHECK(false, "torchopt_accel.sgd_update_: unsupported dtype ", plan.dtype);
  }
}

void sgd_update_cuda(at::TensorList grads, at::TensorList bufs, at::TensorList params, double lr,
                     double momentum, double dampening, double weight_decay, bool nesterov,
                     bool maximize, bool first_step) {
  // Allocations (copies of non-dense leaves, the metadata) and the launch on grads' device.
  std::optional<c10::cuda::CUDAGuard> guard;
  if (!grads.empty()) guard.emplace(grads[0].device());
  sgd_update_impl(grads, bufs, params, lr, momentum, dampening, weight_decay, nesterov, maximize,
                  first_step, run_sgd_cuda);
}

}  // namespace

TORCH_LIBRARY_IMPL(torchopt_accel, CUDA, m) { m.impl("sgd_update_", &sgd_update_cuda); }

}  // namespace torchopt_accel
