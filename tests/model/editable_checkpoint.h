// A writable copy of a fixture checkpoint whose tensors and config can be edited before loading.
#pragma once
#include <fstream>
#include <functional>
#include <list>
#include <map>
#include <memory>

#include "core/error.h"
#include "io/config.h"
#include "model/weights.h"
#include "test_util.h"

namespace m2::test {

namespace fs = std::filesystem;
using nlohmann::json;

// A writable copy of a fixture whose tensors can be edited before loading.
struct EditableCheckpoint {
  TempDir dir;
  std::map<std::string, TensorToWrite> tensors;
  std::list<std::vector<uint8_t>> storage;  // stable addresses
  std::unique_ptr<SafetensorsFile> source;

  explicit EditableCheckpoint(const std::string& fixture) {
    for (const char* f : {"config.json", "hf_quant_config.json"})
      if (fs::exists(kFixtures / fixture / f)) fs::copy_file(kFixtures / fixture / f, dir.path / f);
    source = std::make_unique<SafetensorsFile>(kFixtures / fixture / "model.safetensors");
    for (const auto& [name, t] : source->tensors()) tensors[name] = {name, t.dtype, t.shape, {t.data, t.nbytes}};
  }
  void replace(const std::string& name, DType dtype, std::vector<int64_t> shape) {
    size_t n = dtype_size(dtype);
    for (auto d : shape) n *= size_t(d);
    storage.emplace_back(n, uint8_t(0x3c));
    tensors[name] = {name, dtype, std::move(shape), storage.back()};
  }
  void edit_config(const std::function<void(json&)>& f) { edit_json("config.json", f); }
  void write() {
    std::vector<TensorToWrite> list;
    for (auto& [n, t] : tensors) list.push_back(t);
    write_safetensors(dir.path / "model.safetensors", list);
  }
  void edit_json(const std::string& file, const std::function<void(json&)>& f) {
    json c = read_json_file(dir.path / file);
    f(c);
    std::ofstream(dir.path / file, std::ios::trunc) << c.dump();
  }
  void add(const std::string& name, DType dtype, std::vector<int64_t> shape, std::vector<uint8_t> bytes) {
    storage.push_back(std::move(bytes));
    tensors[name] = {name, dtype, std::move(shape), storage.back()};
  }
  std::string load_error() {
    write();
    try {
      ModelWeights::load(dir.path);
    } catch (const Error& e) {
      return e.what();
    }
    return "no error";
  }
};

}  // namespace m2::test
