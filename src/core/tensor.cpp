#include "core/tensor.h"

#include <fmt/format.h>

#include "core/error.h"

namespace m2 {

std::string_view device_name(Device d) { return d == Device::Cpu ? "cpu" : "cuda"; }

TensorView::TensorView(void* d, DType t, std::initializer_list<int64_t> dims, Device dev)
    : data(d), dtype(t), device(dev), rank(int(dims.size())) {
  if (rank > kMaxRank) fail<InvalidArgument>("tensor of rank {}: at most {} dimensions", rank, kMaxRank);
  int i = 0;
  for (int64_t n : dims) {
    if (n < 0) fail<InvalidArgument>("tensor dimension {} is negative ({})", i, n);
    shape[size_t(i++)] = n;
  }
  numel();  // checks the product for overflow
}

int64_t TensorView::dim(int i) const {
  if (i < 0 || i >= rank) fail<InvalidArgument>("dimension {} of a rank-{} tensor {}", i, rank, str());
  return shape[size_t(i)];
}

int64_t TensorView::numel() const {
  int64_t n = 1;
  for (int i = 0; i < rank; ++i)
    if (__builtin_mul_overflow(n, shape[size_t(i)], &n))
      fail<InvalidArgument>("tensor shape overflows 64-bit element counts");
  return n;
}

int64_t TensorView::row_elems() const {
  int64_t n = 1;
  for (int i = 1; i < rank; ++i) n *= shape[size_t(i)];
  return n;
}

TensorView TensorView::slice(int64_t row0, int64_t rows) const {
  if (rank == 0 || row0 < 0 || rows < 0 || row0 + rows > shape[0])
    fail<InvalidArgument>("rows [{}, {}) of tensor {}", row0, row0 + rows, str());
  TensorView v = *this;
  v.shape[0] = rows;
  v.data = static_cast<uint8_t*>(data) + size_t(row0 * row_elems()) * dtype_size(dtype);
  return v;
}

TensorView TensorView::reshape(std::initializer_list<int64_t> dims) const {
  TensorView v(data, dtype, dims, device);
  if (v.numel() != numel()) fail<InvalidArgument>("cannot view tensor {} as {}", str(), v.str());
  return v;
}

void TensorView::check_dtype(DType want) const {
  if (dtype != want)
    fail<InvalidArgument>("tensor {}: expected element type {}, found {}", str(), dtype_name(want), dtype_name(dtype));
}

std::string TensorView::str() const {
  std::string s = fmt::format("{}[", dtype_name(dtype));
  for (int i = 0; i < rank; ++i) s += fmt::format("{}{}", i ? ", " : "", shape[size_t(i)]);
  return s + fmt::format("] {}", device_name(device));
}

void expect_tensor(const TensorView& t, DType dtype, std::initializer_list<int64_t> dims, std::string_view what,
                   std::string_view of) {
  bool ok = t.dtype == dtype && t.rank == int(dims.size()) && (t.data != nullptr || t.numel() == 0);
  int i = 0;
  for (int64_t n : dims) {
    if (ok && n >= 0 && t.shape[size_t(i)] != n) ok = false;
    ++i;
  }
  if (ok) return;
  std::string want = fmt::format("{}[", dtype_name(dtype));
  i = 0;
  for (int64_t n : dims) want += (i++ ? ", " : "") + (n < 0 ? std::string("*") : std::to_string(n));
  fail<InvalidArgument>("{}{}{}: expected {}], found {}{}", what, of.empty() ? "" : " of ", of, want, t.str(),
                        t.data ? "" : " (no data)");
}

Buffer::Buffer(Allocator& a, size_t bytes) : owner_(&a), bytes_(bytes), device_(a.device()) {
  ptr_ = bytes ? a.allocate(bytes) : nullptr;
}

Buffer& Buffer::operator=(Buffer&& o) noexcept {
  if (this != &o) {
    reset();
    owner_ = std::exchange(o.owner_, nullptr);
    ptr_ = std::exchange(o.ptr_, nullptr);
    bytes_ = std::exchange(o.bytes_, 0);
    device_ = o.device_;
  }
  return *this;
}

void Buffer::reset() noexcept {
  if (owner_ && ptr_) owner_->release(ptr_, bytes_);
  owner_ = nullptr;
  ptr_ = nullptr;
  bytes_ = 0;
}

TensorView Buffer::view(DType dtype, std::initializer_list<int64_t> dims) const {
  TensorView v(ptr_, dtype, dims, device_);
  if (v.nbytes() > bytes_)
    fail<InvalidArgument>("a buffer of {} bytes cannot hold tensor {} ({} bytes)", bytes_, v.str(), v.nbytes());
  return v;
}

}  // namespace m2
