// Tensors as the backend ops see them: a view (pointer, dtype, shape, device) of memory owned
// elsewhere, and a Buffer that owns memory allocated by a backend (host or device).
#pragma once
#include <array>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <string_view>
#include <utility>

#include "core/dtype.h"

namespace m2 {

enum class Device : uint8_t { Cpu, Cuda };
std::string_view device_name(Device d);

template <typename T>
constexpr DType dtype_of();
template <>
constexpr DType dtype_of<float>() { return DType::F32; }
template <>
constexpr DType dtype_of<double>() { return DType::F64; }
template <>
constexpr DType dtype_of<int32_t>() { return DType::I32; }
template <>
constexpr DType dtype_of<int64_t>() { return DType::I64; }
template <>
constexpr DType dtype_of<uint16_t>() { return DType::BF16; }
template <>
constexpr DType dtype_of<uint8_t>() { return DType::U8; }

// A contiguous row-major view of up to 4 dimensions. Copying a view never copies data.
struct TensorView {
  static constexpr int kMaxRank = 4;
  void* data = nullptr;
  DType dtype = DType::F32;
  Device device = Device::Cpu;
  int rank = 0;
  std::array<int64_t, kMaxRank> shape{};

  TensorView() = default;
  TensorView(void* d, DType t, std::initializer_list<int64_t> dims, Device dev = Device::Cpu);
  TensorView(const void* d, DType t, std::initializer_list<int64_t> dims, Device dev = Device::Cpu)
      : TensorView(const_cast<void*>(d), t, dims, dev) {}

  int64_t dim(int i) const;
  int64_t numel() const;
  size_t nbytes() const { return size_t(numel()) * dtype_size(dtype); }
  int64_t row_elems() const;  // elements per index of dim 0
  bool empty() const { return numel() == 0; }

  // The first `rows` indices of dim 0 (checked against the view's extent).
  TensorView first(int64_t rows) const { return slice(0, rows); }
  // Indices [row0, row0 + rows) of dim 0.
  TensorView slice(int64_t row0, int64_t rows) const;
  // Same memory seen with another shape of the same element count.
  TensorView reshape(std::initializer_list<int64_t> dims) const;

  // Typed pointer; the view's dtype must be T's.
  template <typename T>
  T* ptr() const {
    check_dtype(dtype_of<T>());
    return static_cast<T*>(data);
  }
  std::string str() const;  // "F32[4, 64] cpu"

 private:
  void check_dtype(DType want) const;
};

// Checks dtype and shape (-1 in `dims` accepts any extent); throws InvalidArgument naming `what`
// (and `of`, e.g. the weight's name) with expected and found. Allocates nothing unless it throws.
void expect_tensor(const TensorView& t, DType dtype, std::initializer_list<int64_t> dims, std::string_view what,
                   std::string_view of = {});

// Where a Buffer's memory comes from: a backend (host memory for the CPU, device memory for a GPU).
class Allocator {
 public:
  virtual ~Allocator() = default;
  virtual Device device() const = 0;
  virtual void* allocate(size_t bytes) = 0;
  virtual void release(void* ptr, size_t bytes) noexcept = 0;
};

// Owns `bytes` of memory from an Allocator; released when destroyed. Move-only.
class Buffer {
 public:
  Buffer() = default;
  Buffer(Allocator& a, size_t bytes);
  ~Buffer() { reset(); }
  Buffer(Buffer&& o) noexcept { *this = std::move(o); }
  Buffer& operator=(Buffer&& o) noexcept;
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;

  void* data() const { return ptr_; }
  size_t bytes() const { return bytes_; }
  Device device() const { return device_; }
  // The whole buffer (or its first elements) seen as a tensor of `dims`; the byte size must fit.
  TensorView view(DType dtype, std::initializer_list<int64_t> dims) const;
  void reset() noexcept;

 private:
  Allocator* owner_ = nullptr;
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
  Device device_ = Device::Cpu;
};

}  // namespace m2
