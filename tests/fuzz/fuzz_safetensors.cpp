// libFuzzer: the safetensors reader (model/safetensors.cpp). The first byte picks the input: a
// single model.safetensors, or a sharded checkpoint's model.safetensors.index.json beside two
// small valid shards. Bad input must be a FormatError (or runtime_error naming the file), never
// a crash, a hang or undefined behaviour. The same bytes are also read as a pending shard's
// header block (SafetensorsFile::from_header).
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <string>

#include "model/safetensors.h"

namespace fs = std::filesystem;
using loftqd::model::Checkpoint;

namespace {

void put(const fs::path& p, const std::string& s) {
  std::ofstream f(p, std::ios::binary | std::ios::trunc);
  f << s;
}

// A valid one-tensor shard: `name` as U8 [1].
std::string shard(const std::string& name) {
  std::string header = "{\"" + name + "\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}";
  std::string len(8, '\0');
  for (int i = 0; i < 8; ++i) len[i] = static_cast<char>((header.size() >> (8 * i)) & 0xff);
  return len + header + "x";
}

const fs::path& work_dir() {
  static const fs::path dir = [] {
    auto d = fs::temp_directory_path() / ("loftqd-fuzz-st-" + std::to_string(::getpid()));
    fs::create_directories(d / "single");
    fs::create_directories(d / "sharded");
    put(d / "sharded" / "model-00001-of-00002.safetensors", shard("a"));
    put(d / "sharded" / "model-00002-of-00002.safetensors", shard("b"));
    return d;
  }();
  return dir;
}

// Every byte is read into it, so the reads cannot be optimized away.
volatile std::byte g_sink{};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const bool sharded = data[0] & 1;
  const std::string body(reinterpret_cast<const char*>(data + 1), size - 1);
  const fs::path dir = work_dir() / (sharded ? "sharded" : "single");
  put(dir / (sharded ? "model.safetensors.index.json" : "model.safetensors"), body);
  try {
    Checkpoint c = Checkpoint::open(dir);
    // Every accepted tensor's bytes lie inside the mapping; reading them (and as f32 where the
    // dtype allows) must not fault.
    for (const auto& [shard_index, t] : c.all_tensors()) {
      auto bytes = c.shard(shard_index).bytes(*t);
      if (bytes.size() != t->nbytes()) __builtin_trap();
      for (auto b : bytes) g_sink = b;
      try {
        (void)c.shard(shard_index).read_f32(*t);
      } catch (const loftqd::model::FormatError&) {  // not a float dtype
      }
    }
  } catch (const loftqd::model::FormatError&) {
  } catch (const std::runtime_error&) {  // I/O errors naming the file
  }
  // The same bytes as the header block of a shard still downloading: accepted only when they
  // are exactly 8 + N bytes of a valid header, whose entries then end within the file it
  // announces; reading data from it is refused.
  try {
    auto h = loftqd::model::SafetensorsFile::from_header(dir / "pending.safetensors", body);
    if (h->header_bytes() != body) __builtin_trap();
    for (const auto& t : h->tensors()) {
      if (t.end > h->file_size() - body.size()) __builtin_trap();
      try {
        (void)h->bytes(t);
        __builtin_trap();
      } catch (const std::logic_error&) {
      }
    }
  } catch (const loftqd::model::FormatError&) {
  }
  return 0;
}
