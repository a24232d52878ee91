// The torchopt_accel._C extension module. Loading it registers the torchopt_accel ops (the
// TORCH_LIBRARY blocks in the other translation units); build_info() says how it was built.
#include <ATen/Parallel.h>
#include <torch/extension.h>

#include "adam.h"

#ifndef TORCHOPT_ACCEL_CUDA_ARCHS
#define TORCHOPT_ACCEL_CUDA_ARCHS ""
#endif
#ifndef TORCHOPT_ACCEL_CUDA_VERSION
#define TORCHOPT_ACCEL_CUDA_VERSION ""
#endif

namespace {

pybind11::list split(const std::string& csv) {
  pybind11::list out;
  size_t start = 0;
  while (start < csv.size()) {
    size_t end = csv.find_first_of(",;", start);
    if (end == std::string::npos) end = csv.size();
    if (end > start) out.append(csv.substr(start, end - start));
    start = end + 1;
  }
  return out;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "torchopt-accel native extension: fused Adam and SGD kernels as torch.ops.torchopt_accel.*";
  m.def(
      "build_info",
      []() {
        pybind11::dict info;
        info["torch_version"] = TORCH_VERSION;
#ifdef TORCHOPT_ACCEL_WITH_CUDA
        info["cuda"] = true;
#else
        info["cuda"] = false;
#endif
        info["cuda_version"] = std::string(TORCHOPT_ACCEL_CUDA_VERSION);
        info["cuda_archs"] = split(TORCHOPT_ACCEL_CUDA_ARCHS);
#ifdef _OPENMP
        info["openmp"] = true;
#else
        info["openmp"] = false;
#endif
        info["num_threads"] = at::get_num_threads();
#if AT_PARALLEL_OPENMP
        info["parallel_backend"] = "OpenMP";
#else
        info["parallel_backend"] = "native";
#endif
        info["cpu_capabilities_compiled"] = split(torchopt_accel::cpu_kernel_capabilities_compiled());
        info["cpu_capability"] = std::string(torchopt_accel::cpu_kernel_capability());
#if defined(__clang__)
        info["compiler"] = std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
        info["compiler"] = std::string("gcc ") + __VERSION__;
#elif defined(_MSC_VER)
        info["compiler"] = std::string("msvc ") + std::to_string(_MSC_VER);
#endif
        pybind11::list ops;
        for (const char* name : {"adam_step_", "adam_forward", "adam_backward", "adam_apply_",
                                 "sgd_update_"}) {
          ops.append(std::string("torchopt_accel::") + name);
        }
        info["ops"] = ops;
        return info;
      },
      "How the extension was built: torch version, CUDA, CPU kernel variants, threads, ops.");
}
