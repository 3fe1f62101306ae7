// safetensors reader (mmap) and streaming writer, and sharded checkpoints (DESIGN §3.1).
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "model/dtype.h"

namespace loftqd::model {

// Thrown for any malformed input. what() is "FILE: tensor 'NAME': RULE" (or "FILE: RULE" when no
// tensor is involved), so the user can find the culprit.
class FormatError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct TensorInfo {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // offsets into the data buffer (after the header)
  uint64_t end = 0;
  size_t numel() const;
  size_t nbytes() const { return static_cast<size_t>(end - begin); }
};

// A validated, memory-mapped safetensors file. Validation (all rules of DESIGN §3.1):
// file >= 8 bytes; header length N <= 100,000,000 and 8+N <= file size; header is valid UTF-8
// JSON object; each entry has dtype (known name), shape (non-negative integers), data_offsets
// ([begin,end], begin <= end); no duplicate keys; end-begin == numel*dtype_size; offsets,
// sorted, are contiguous from 0 without holes or overlaps; 8+N+buffer_end == file size;
// "__metadata__" is an object of string values.
class SafetensorsFile {
 public:
  static std::unique_ptr<SafetensorsFile> open(const std::filesystem::path& p);
  // A file still to come (a shard being downloaded), from its header block alone: `head` is
  // the file's first 8 + N bytes, validated by the same rules, the entries tiling [0, E) for
  // the largest end E (the file will be 8 + N + E bytes). tensors(), find() and metadata() work;
  // bytes(), read_f32() and release() throw std::logic_error until the file is opened.
  static std::unique_ptr<SafetensorsFile> from_header(const std::filesystem::path& p,
                                                      std::string_view head);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::filesystem::path& path() const { return path_; }
  const std::vector<TensorInfo>& tensors() const { return tensors_; }  // in offset order
  const TensorInfo* find(std::string_view name) const;                 // nullptr if absent
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  bool pending() const { return map_ == nullptr; }  // made by from_header
  uint64_t file_size() const { return size_; }      // the file's, or the one it will have
  // The header block (the first 8 + N bytes) as in the file.
  std::string_view header_bytes() const;

  // Raw little-endian bytes of a tensor (valid while this object lives).
  std::span<const std::byte> bytes(const TensorInfo& t) const;
  // The tensor as float32 (dtype must be F32/F16/BF16; FormatError otherwise).
  std::vector<float> read_f32(const TensorInfo& t) const;
  // Tells the kernel the tensor's pages are no longer needed, so streaming a large
  // checkpoint keeps the resident set small.
  void release(const TensorInfo& t) const;

 private:
  SafetensorsFile() = default;
  void index_tensors(std::vector<TensorInfo> tensors);
  std::filesystem::path path_;
  int fd_ = -1;
  const std::byte* map_ = nullptr;
  size_t size_ = 0;
  size_t data_start_ = 0;  // 8 + N
  std::string head_;       // pending: the header block
  std::vector<TensorInfo> tensors_;
  std::map<std::string, size_t, std::less<>> index_;
  std::map<std::string, std::string> metadata_;
};

struct TensorSpec {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
};

// Streams a safetensors file to disk: the header is fixed from `specs` up front (offsets in
// spec order, header padded with spaces to a multiple of 8), then each tensor's bytes are
// written with write(), in spec order, each exactly nbytes long. commit() checks every tensor
// was written, fsyncs and renames into place. Abandoning the writer leaves nothing behind.
class SafetensorsWriter {
 public:
  SafetensorsWriter(std::filesystem::path final_path, std::vector<TensorSpec> specs,
                    const std::map<std::string, std::string>& metadata = {});
  ~SafetensorsWriter();
  void write(std::string_view name, std::span<const std::byte> data);
  void write_f32(std::string_view name, const float* data, size_t n);  // converts to spec dtype
  void commit();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Convenience: writes a whole file from in-memory tensors (f32 data converted to each dtype).
struct OwnedTensor {
  TensorSpec spec;
  std::vector<std::byte> data;
};
void write_safetensors(const std::filesystem::path& p, const std::vector<OwnedTensor>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

// A model directory: model.safetensors, or shards listed in model.safetensors.index.json
// ({"metadata":{"total_size":N},"weight_map":{tensor: shard}}). Validates that every shard in
// the map exists and is a file name in the directory (no '/' or '..'), that each tensor of the
// map is in its shard and no tensor is in two shards, and that every shard-named file in the
// directory (STEM-NNNNN-of-NNNNN.safetensors) is in the map (a shard-named file without an index
// is an error too). Other .safetensors files (e.g. consolidated.safetensors) are ignored.
//
// `pending` names shards that are still being downloaded, each with its header block (the
// file's first 8 + N bytes, e.g. fetched with a Range request): a listed shard that is not in
// the directory yet is opened from its header (SafetensorsFile::from_header), so the tensors
// of every shard are known before its data is there; load() opens it once it is. A listed
// shard that is already there is opened and held to that header like load() does.
class Checkpoint {
 public:
  static Checkpoint open(const std::filesystem::path& dir,
                         const std::map<std::string, std::string>& pending = {});

  const std::filesystem::path& dir() const { return dir_; }
  bool sharded() const { return sharded_; }
  // Shard file names in the order they appear in the index (or {"model.safetensors"}).
  const std::vector<std::string>& shard_names() const { return shard_names_; }
  const SafetensorsFile& shard(size_t i) const { return *shards_[i]; }
  size_t num_shards() const { return shards_.size(); }
  bool pending(size_t i) const { return shards_[i]->pending(); }
  // Opens the i-th shard, pending until now, from the directory: FormatError naming the file
  // when its header block is not byte for byte the one it was planned from (the tensors of a
  // pending shard stay valid: pointers into them may be kept).
  void load(size_t i);
  // All tensors with the shard index that holds each.
  std::vector<std::pair<size_t, const TensorInfo*>> all_tensors() const;
  const std::filesystem::path& index_path() const { return index_path_; }  // empty if unsharded

 private:
  std::filesystem::path dir_;
  std::filesystem::path index_path_;
  bool sharded_ = false;
  std::vector<std::string> shard_names_;
  std::vector<std::shared_ptr<SafetensorsFile>> shards_;
  std::vector<std::shared_ptr<SafetensorsFile>> loaded_from_;  // the pending ones load() replaced
};

}  // namespace loftqd::model
