#include "io/safetensors.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <mutex>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"

namespace m2 {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// Mapped files, for the SIGBUS handler: a read from a mapping whose file was truncated or replaced
// underneath faults with SIGBUS, which is reported as an I/O error naming the file instead of a
// crash. Slots are published with release stores; the handler only reads them.
struct MappedRange {
  std::atomic<uintptr_t> begin{0}, end{0};
  char path[512] = {};
};
constexpr size_t kMaxMappedRanges = 4096;
MappedRange g_mapped[kMaxMappedRanges];
std::mutex g_mapped_mutex;

void write_all(const char* s, size_t n) {
  while (n > 0) {
    const ssize_t w = ::write(2, s, n);
    if (w <= 0) return;
    s += w;
    n -= size_t(w);
  }
}

void on_sigbus(int, siginfo_t* info, void*) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(info->si_addr);
  for (const MappedRange& r : g_mapped) {
    const uintptr_t b = r.begin.load(std::memory_order_acquire), e = r.end.load(std::memory_order_acquire);
    if (b == 0 || a < b || a >= e) continue;
    char num[24];
    size_t k = sizeof num;
    uintptr_t off = a - b;
    do num[--k] = char('0' + off % 10); while ((off /= 10) != 0 && k > 0);
    static const char head[] = "m2: I/O error: ", mid[] = ": the file was truncated or replaced while mapped (read at byte ",
                      tail[] = "); checkpoint files must not change while m2 runs\n";
    write_all(head, sizeof head - 1);
    write_all(r.path, ::strnlen(r.path, sizeof r.path));
    write_all(mid, sizeof mid - 1);
    write_all(num + k, sizeof num - k);
    write_all(tail, sizeof tail - 1);
    ::_exit(74);  // EX_IOERR
  }
  ::signal(SIGBUS, SIG_DFL);  // not ours: the fault repeats on return and takes the default action
}

void register_mapping(const uint8_t* data, size_t size, const std::string& path) {
  static std::once_flag installed;
  std::call_once(installed, [] {
    struct sigaction sa {};
    sa.sa_sigaction = on_sigbus;
    sa.sa_flags = SA_SIGINFO;
    sigemptyset(&sa.sa_mask);
    ::sigaction(SIGBUS, &sa, nullptr);
  });
  std::lock_guard lock(g_mapped_mutex);
  for (MappedRange& r : g_mapped) {
    if (r.begin.load(std::memory_order_relaxed) != 0) continue;
    std::snprintf(r.path, sizeof r.path, "%s", path.c_str());
    r.end.store(reinterpret_cast<uintptr_t>(data) + size, std::memory_order_release);
    r.begin.store(reinterpret_cast<uintptr_t>(data), std::memory_order_release);
    return;
  }  // more than kMaxMappedRanges files mapped at once: a fault there is not named, still fatal
}

void unregister_mapping(const uint8_t* data) {
  std::lock_guard lock(g_mapped_mutex);
  for (MappedRange& r : g_mapped)
    if (r.begin.load(std::memory_order_relaxed) == reinterpret_cast<uintptr_t>(data)) r.begin.store(0, std::memory_order_release);
}

}  // namespace

MappedFile::MappedFile(const fs::path& path) : path_(path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail<IoError>("{}: cannot open: {}", path.string(), std::strerror(errno));
  struct stat st{};
  if (::fstat(fd, &st) != 0) {
    int err = errno;
    ::close(fd);
    fail<IoError>("{}: cannot stat: {}", path.string(), std::strerror(err));
  }
  size_ = size_t(st.st_size);
  if (size_ > 0) {
    void* p = ::mmap(nullptr, size_, PROT_READ, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) {
      int err = errno;
      ::close(fd);
      fail<IoError>("{}: cannot mmap {} bytes: {}", path.string(), size_, std::strerror(err));
    }
    data_ = static_cast<const uint8_t*>(p);
    register_mapping(data_, size_, path.string());
  }
  ::close(fd);
}

MappedFile::~MappedFile() {
  if (data_) {
    unregister_mapping(data_);
    ::munmap(const_cast<uint8_t*>(data_), size_);
  }
}

int64_t TensorRef::numel() const {
  int64_t n = 1;
  for (auto d : shape) n *= d;
  return n;
}

std::string TensorRef::shape_str() const { return fmt::format("[{}]", fmt::join(shape, ", ")); }

namespace {
constexpr uint64_t kMaxHeaderBytes = 100ull << 20;  // the safetensors reference limit
}

SafetensorsFile::SafetensorsFile(const fs::path& path) : file_(std::make_shared<MappedFile>(path)) {
  const std::string where = path.string();
  const size_t size = file_->size();
  if (size < 8) fail<FormatError>("{}: truncated file: {} bytes, expected at least 8 for the header length", where, size);
  uint64_t header_len = 0;
  std::memcpy(&header_len, file_->data(), 8);  // little-endian on every supported target
  if (header_len > kMaxHeaderBytes)
    fail<FormatError>("{}: header length {} exceeds the {} byte limit", where, header_len, kMaxHeaderBytes);
  if (8 + header_len > size)
    fail<FormatError>("{}: truncated file: header claims {} bytes but the file holds {} after the length", where,
                      header_len, size - 8);
  const char* hp = reinterpret_cast<const char*>(file_->data() + 8);
  json header;
  try {
    header = json::parse(hp, hp + header_len);
  } catch (const json::exception& e) {
    fail<FormatError>("{}: malformed header JSON: {}", where, e.what());
  }
  if (!header.is_object()) fail<FormatError>("{}: header is not a JSON object", where);

  const uint8_t* data_start = file_->data() + 8 + header_len;
  const uint64_t data_size = size - 8 - header_len;
  std::vector<std::pair<uint64_t, uint64_t>> ranges;
  std::vector<std::string> range_names;

  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& name = it.key();
    if (name == "__metadata__") {
      if (!it->is_object()) fail<FormatError>("{}: __metadata__ is not an object", where);
      for (auto m = it->begin(); m != it->end(); ++m) {
        if (!m->is_string()) fail<FormatError>("{}: __metadata__[{}] is not a string", where, m.key());
        metadata_[m.key()] = m->get<std::string>();
      }
      continue;
    }
    const json& e = *it;
    if (!e.is_object() || !e.contains("dtype") || !e.contains("shape") || !e.contains("data_offsets"))
      fail<FormatError>("{}: tensor '{}': entry must be an object with dtype, shape and data_offsets", where, name);
    if (!e["dtype"].is_string()) fail<FormatError>("{}: tensor '{}': dtype is not a string", where, name);
    auto dt = dtype_from_name(e["dtype"].get<std::string>());
    if (!dt) fail<FormatError>("{}: tensor '{}': unsupported dtype '{}'", where, name, e["dtype"].get<std::string>());
    TensorRef t;
    t.name = name;
    t.dtype = *dt;
    t.file = path.filename().string();
    if (!e["shape"].is_array()) fail<FormatError>("{}: tensor '{}': shape is not an array", where, name);
    unsigned __int128 numel = 1;
    for (const auto& d : e["shape"]) {
      if (!d.is_number_integer() || d.get<int64_t>() < 0)
        fail<FormatError>("{}: tensor '{}': shape {} has a dimension that is not a non-negative integer", where, name,
                          e["shape"].dump());
      t.shape.push_back(d.get<int64_t>());
      numel *= uint64_t(d.get<int64_t>());
      if (numel > (unsigned __int128)(1) << 62)
        fail<FormatError>("{}: tensor '{}': shape {} is too large", where, name, e["shape"].dump());
    }
    const json& off = e["data_offsets"];
    if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() || !off[1].is_number_unsigned())
      fail<FormatError>("{}: tensor '{}': data_offsets must be two non-negative integers, found {}", where, name,
                        off.dump());
    uint64_t b = off[0].get<uint64_t>(), en = off[1].get<uint64_t>();
    if (b > en) fail<FormatError>("{}: tensor '{}': data_offsets [{}, {}] run backwards", where, name, b, en);
    if (en > data_size)
      fail<FormatError>("{}: tensor '{}': data_offsets end {} is past the data section ({} bytes): truncated file?",
                        where, name, en, data_size);
    uint64_t expected = uint64_t(numel) * dtype_size(t.dtype);
    if (en - b != expected)
      fail<FormatError>("{}: tensor '{}': {} {} needs {} bytes, data_offsets span {}", where, name, dtype_name(t.dtype),
                        t.shape_str(), expected, en - b);
    t.data = data_start + b;
    t.nbytes = size_t(en - b);
    ranges.emplace_back(b, en);
    range_names.push_back(name);
    tensors_.emplace(name, std::move(t));
  }
  std::vector<size_t> order(ranges.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return ranges[a] < ranges[b]; });
  for (size_t i = 1; i < order.size(); ++i) {
    const auto& prev = ranges[order[i - 1]];
    const auto& cur = ranges[order[i]];
    if (cur.first < prev.second && cur.second > cur.first)
      fail<FormatError>("{}: tensors '{}' [{}, {}) and '{}' [{}, {}) overlap", where, range_names[order[i - 1]],
                        prev.first, prev.second, range_names[order[i]], cur.first, cur.second);
  }
}

Checkpoint::Checkpoint(const fs::path& dir) : dir_(dir) {
  if (!fs::is_directory(dir)) fail<IoError>("{}: not a directory", dir.string());
  const fs::path index = dir / "model.safetensors.index.json";
  const fs::path single = dir / "model.safetensors";
  if (fs::exists(index)) {
    std::ifstream in(index);
    if (!in) fail<IoError>("{}: cannot read", index.string());
    json j;
    try {
      j = json::parse(in);
    } catch (const json::exception& e) {
      fail<FormatError>("{}: malformed JSON: {}", index.string(), e.what());
    }
    if (!j.is_object() || !j.contains("weight_map") || !j["weight_map"].is_object())
      fail<FormatError>("{}: expected an object with a 'weight_map' object", index.string());
    std::map<std::string, std::string> weight_map;
    std::vector<std::string> shards;
    for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it) {
      if (!it->is_string())
        fail<FormatError>("{}: weight_map['{}'] is not a file name", index.string(), it.key());
      std::string f = it->get<std::string>();
      if (f.find('/') != std::string::npos || f == "..")
        fail<FormatError>("{}: weight_map['{}'] = '{}' leaves the checkpoint directory", index.string(), it.key(), f);
      weight_map[it.key()] = f;
      if (std::find(shards.begin(), shards.end(), f) == shards.end()) shards.push_back(f);
    }
    for (const auto& s : shards) add_file(dir / s);
    for (const auto& [name, file] : weight_map) {
      auto t = tensors_.find(name);
      if (t == tensors_.end())
        fail<ModelError>("{}: tensor '{}' is mapped to {} but that file does not contain it", index.string(), name, file);
      if (t->second.file != file)
        fail<ModelError>("{}: tensor '{}' is mapped to {} but found in {}", index.string(), name, file, t->second.file);
    }
  } else if (fs::exists(single)) {
    add_file(single);
  } else {
    std::vector<fs::path> files;
    for (const auto& e : fs::directory_iterator(dir))
      if (e.path().extension() == ".safetensors" && e.path().filename() != "reference.safetensors")
        files.push_back(e.path());
    std::sort(files.begin(), files.end());
    if (files.empty())
      fail<IoError>("{}: no model.safetensors, model.safetensors.index.json or *.safetensors file", dir.string());
    for (const auto& f : files) add_file(f);
  }
}

void Checkpoint::add_file(const fs::path& path) {
  auto f = std::make_unique<SafetensorsFile>(path);
  for (const auto& [name, t] : f->tensors()) {
    auto [it, inserted] = tensors_.emplace(name, t);
    if (!inserted)
      fail<FormatError>("{}: tensor '{}' appears in both {} and {}", dir_.string(), name, it->second.file, t.file);
  }
  files_.push_back(std::move(f));
}

const TensorRef* Checkpoint::find(const std::string& name) const {
  auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : &it->second;
}

const TensorRef& Checkpoint::get(const std::string& name) const {
  const TensorRef* t = find(name);
  if (!t) fail<ModelError>("{}: missing tensor '{}'", dir_.string(), name);
  return *t;
}

void Checkpoint::release(const std::string& prefix) const {
  const uintptr_t page = uintptr_t(::sysconf(_SC_PAGESIZE));
  for (auto it = tensors_.lower_bound(prefix); it != tensors_.end() && it->first.compare(0, prefix.size(), prefix) == 0; ++it) {
    const uintptr_t b = (uintptr_t(it->second.data) + page - 1) & ~(page - 1);  // whole pages inside the tensor
    const uintptr_t e = (uintptr_t(it->second.data) + it->second.nbytes) & ~(page - 1);
    if (e > b) ::madvise(reinterpret_cast<void*>(b), e - b, MADV_DONTNEED);
  }
}

size_t Checkpoint::bytes_on_disk() const {
  size_t n = 0;
  for (const auto& f : files_) n += f->file_size();
  return n;
}

void write_safetensors(const fs::path& path, const std::vector<TensorToWrite>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  // The data section starts at a multiple of kTensorAlignment (the header padded with spaces, which
  // JSON allows), and the tensors whose sizes are multiples of it come first, in the given order, so
  // that each of them starts aligned: a weight row's 64-byte loads then each touch one cache line
  // (misaligned by 40 bytes, a BF16 model's batch-1 decode read 75-80% of the read limit instead of
  // 88-93%, docs/BENCHMARKS.md). The rest (scalars, odd-sized vectors) follow.
  std::vector<const TensorToWrite*> order;
  for (const auto& t : tensors)
    if (t.bytes.size() % kTensorAlignment == 0) order.push_back(&t);
  for (const auto& t : tensors)
    if (t.bytes.size() % kTensorAlignment != 0) order.push_back(&t);
  json header = json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (const TensorToWrite* t : order) {
    int64_t numel = 1;
    for (auto d : t->shape) numel *= d;
    if (size_t(numel) * dtype_size(t->dtype) != t->bytes.size())
      fail<InvalidArgument>("write_safetensors {}: tensor '{}' {} {} needs {} bytes, given {}", path.string(), t->name,
                            dtype_name(t->dtype), fmt::join(t->shape, "x"), size_t(numel) * dtype_size(t->dtype),
                            t->bytes.size());
    header[t->name] = {{"dtype", dtype_name(t->dtype)}, {"shape", t->shape}, {"data_offsets", {offset, offset + t->bytes.size()}}};
    offset += t->bytes.size();
  }
  std::string h = header.dump();
  while ((8 + h.size()) % kTensorAlignment) h.push_back(' ');
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) fail<IoError>("{}: cannot create", path.string());
  uint64_t n = h.size();
  out.write(reinterpret_cast<const char*>(&n), 8);
  out.write(h.data(), std::streamsize(h.size()));
  for (const TensorToWrite* t : order) out.write(reinterpret_cast<const char*>(t->bytes.data()), std::streamsize(t->bytes.size()));
  if (!out) fail<IoError>("{}: write failed", path.string());
}

}  // namespace m2
