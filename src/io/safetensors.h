// Safetensors files, memory-mapped. Opening reads only the header; tensor bytes are paged in by the
// kernels that use them, so a 230B checkpoint opens in milliseconds.
#pragma once
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "core/dtype.h"

namespace m2 {

// A read-only mapping of a whole file. Unmapped on destruction.
class MappedFile {
 public:
  explicit MappedFile(const std::filesystem::path& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

// One tensor of a checkpoint: metadata plus a pointer into the mapping.
struct TensorRef {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  const uint8_t* data = nullptr;  // points into the mapped file
  size_t nbytes = 0;
  std::string file;  // file name, for error messages

  int64_t numel() const;
  std::string shape_str() const;  // "[6144, 3072]"
};

// One .safetensors file. The constructor validates the whole header: JSON syntax, dtypes, shapes,
// offsets in range and non-overlapping, and dtype × shape = byte length.
class SafetensorsFile {
 public:
  explicit SafetensorsFile(const std::filesystem::path& path);

  const std::map<std::string, TensorRef>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const std::filesystem::path& path() const { return file_->path(); }
  size_t file_size() const { return file_->size(); }

 private:
  std::shared_ptr<MappedFile> file_;
  std::map<std::string, TensorRef> tensors_;
  std::map<std::string, std::string> metadata_;
};

// All tensors of a checkpoint directory: `model.safetensors`, or the shards named by
// `model.safetensors.index.json`, or (failing both) every *.safetensors file in the directory.
class Checkpoint {
 public:
  explicit Checkpoint(const std::filesystem::path& dir);

  const TensorRef* find(const std::string& name) const;
  // Throws ModelError naming the tensor and the directory when it is absent.
  const TensorRef& get(const std::string& name) const;
  const std::map<std::string, TensorRef>& tensors() const { return tensors_; }
  const std::filesystem::path& dir() const { return dir_; }
  size_t bytes_on_disk() const;
  size_t num_files() const { return files_.size(); }
  // Drops the resident pages of every tensor whose name starts with `prefix` from this process
  // (madvise MADV_DONTNEED; they are read again from the file if touched). Layer-streaming passes
  // use it to keep one layer resident at a time.
  void release(const std::string& prefix) const;

 private:
  void add_file(const std::filesystem::path& path);

  std::filesystem::path dir_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, TensorRef> tensors_;
};

// Writes tensors as one safetensors file (used by `m2 synth`, `m2 quantize`, `--logits-out` and the
// tests). Every tensor whose size is a multiple of kTensorAlignment bytes starts at a file offset (and
// so at an mmap address) that is a multiple of it; the others are written after them.
constexpr size_t kTensorAlignment = 64;
struct TensorToWrite {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  std::span<const uint8_t> bytes;
};
// A tensor whose bytes are held until written (what the quantizer and m2 synth produce).
struct OwnedTensor {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;
  TensorToWrite to_write() const { return {name, dtype, shape, bytes}; }
};
void write_safetensors(const std::filesystem::path& path, const std::vector<TensorToWrite>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

}  // namespace m2
