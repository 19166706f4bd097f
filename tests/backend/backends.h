// The backends present in this build, for tests written once against the Backend interface, and
// helpers to move test tensors in and out of a backend's memory.
#pragma once
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "backend/cpu/cpu_backend.h"
#include "core/tensor.h"

namespace m2::test {

struct BackendCase {
  std::string name;
  std::function<std::unique_ptr<Backend>()> make;
};

// The CPU with its best kernels, with int8 activations for the FP4 decode products (cpu_q8), with those
// and bf16 activations for BF16 products (cpu_q8_bf16: on CPUs without AVX512_BF16 the same as
// cpu_q8), and with the portable kernels (what ARM runs without NEON). A device backend adds itself
// here when built and present.
inline std::vector<std::string> backend_names() { return {"cpu", "cpu_q8", "cpu_q8_bf16", "cpu_generic"}; }

inline std::unique_ptr<Backend> make_backend(const std::string& name) {
  if (name == "cpu") return std::make_unique<CpuBackend>(2);
  if (name == "cpu_q8") return std::make_unique<CpuBackend>(2, LinearPath::Auto, Activations::Q8);
  if (name == "cpu_q8_bf16") return std::make_unique<CpuBackend>(2, LinearPath::Auto, Activations::Q8Bf16);
  if (name == "cpu_generic") return std::make_unique<CpuBackend>(2, LinearPath::Generic);
  throw std::runtime_error("unknown backend " + name);
}

// ‖y − ref‖/‖ref‖ allowed for a linear product on a backend: fp32 accumulation over up to 3072
// columns vs double; with int8 activations (per-32 scale max|x|/127) the rounding of x adds about
// 0.5% on Gaussian inputs (bounded per element in linear_test.cpp), so 2% there; bf16 activations
// (relative rounding ≤ 2^-8) add ~0.2%, within the same 2%.
inline double linear_tolerance(const std::string& backend) {
  return backend == "cpu_q8" || backend == "cpu_q8_bf16" ? 2e-2 : 1e-5;
}

// A tensor in a backend's memory, filled from host data.
struct DeviceTensor {
  Buffer buffer;
  TensorView view;
};

template <typename T>
DeviceTensor upload(Backend& be, const std::vector<T>& host, std::initializer_list<int64_t> dims) {
  DeviceTensor t{Buffer(be, std::max<size_t>(1, host.size()) * sizeof(T)), {}};
  t.view = t.buffer.view(dtype_of<T>(), dims);
  if (size_t(t.view.numel()) != host.size()) throw std::runtime_error("upload: shape does not match the data");
  be.upload(t.view, host.data(), host.size() * sizeof(T));
  return t;
}

template <typename T>
DeviceTensor empty_tensor(Backend& be, std::initializer_list<int64_t> dims, DType dtype = dtype_of<T>()) {
  TensorView probe(static_cast<void*>(nullptr), dtype, dims);
  DeviceTensor t{Buffer(be, std::max<size_t>(1, probe.nbytes())), {}};
  t.view = t.buffer.view(dtype, dims);
  return t;
}

template <typename T>
std::vector<T> download(Backend& be, const TensorView& v) {
  std::vector<T> host(size_t(v.numel()));
  be.synchronize();
  be.download(host.data(), v, host.size() * sizeof(T));
  return host;
}

}  // namespace m2::test
