#include "model/safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <string_view>
#include <utility>

#include "common/fs.h"

namespace loftqd::model {

using common::AtomicFile;
using common::read_file;

namespace {

using json = nlohmann::json;

constexpr uint64_t kMaxHeaderLen = 100'000'000;

[[noreturn]] void fail(const std::filesystem::path& p, const std::string& rule) {
  throw FormatError(p.string() + ": " + rule);
}

[[noreturn]] void fail(const std::filesystem::path& p, std::string_view tensor,
                       const std::string& rule) {
  throw FormatError(p.string() + ": tensor '" + std::string(tensor) + "': " + rule);
}

// Strict UTF-8 (RFC 3629): no overlong forms, no surrogates, nothing above U+10FFFF.
// Returns the offset of the first bad byte, or nullopt.
std::optional<size_t> invalid_utf8_at(std::string_view s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const size_t n = s.size();
  size_t i = 0;
  while (i < n) {
    const unsigned c = p[i];
    if (c < 0x80) {
      ++i;
      continue;
    }
    size_t len;
    unsigned lo = 0x80, hi = 0xBF;  // allowed range of the second byte
    if (c >= 0xC2 && c <= 0xDF) {
      len = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
      len = 3;
      if (c == 0xE0) lo = 0xA0;
      if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
      len = 4;
      if (c == 0xF0) lo = 0x90;
      if (c == 0xF4) hi = 0x8F;
    } else {
      return i;
    }
    if (i + len > n) return i;
    if (p[i + 1] < lo || p[i + 1] > hi) return i;
    for (size_t k = 2; k < len; ++k) {
      if (p[i + k] < 0x80 || p[i + k] > 0xBF) return i;
    }
    i += len;
  }
  return std::nullopt;
}

// Parses JSON, rejecting duplicate keys in any object (nlohmann silently keeps the last one).
// On a duplicate, `dup_key` receives the key and `dup_top` the top-level key it sits under
// (equal to dup_key for a duplicate at the top level). Throws json::parse_error on bad JSON.
json parse_json_no_dups(std::string_view text, std::optional<std::string>& dup_key,
                        std::optional<std::string>& dup_top) {
  std::vector<std::set<std::string>> stack;
  std::string top_key;
  auto cb = [&](int /*depth*/, json::parse_event_t ev, json& parsed) -> bool {
    switch (ev) {
      case json::parse_event_t::object_start:
        stack.emplace_back();
        break;
      case json::parse_event_t::object_end:
        if (!stack.empty()) stack.pop_back();
        break;
      case json::parse_event_t::key:
        if (!stack.empty() && parsed.is_string()) {
          const auto& k = parsed.get_ref<const std::string&>();
          if (stack.size() == 1) top_key = k;
          if (!stack.back().insert(k).second && !dup_key) {
            dup_key = k;
            dup_top = top_key;
          }
        }
        break;
      default:
        break;
    }
    return true;
  };
  return json::parse(text.begin(), text.end(), cb, /*allow_exceptions=*/true,
                     /*ignore_comments=*/false);
}

std::string shape_str(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

// numel * elem_size, or nullopt on overflow of uint64.
std::optional<uint64_t> checked_nbytes(const std::vector<int64_t>& shape, size_t elem_size) {
  uint64_t total = elem_size;
  for (int64_t d : shape) {
    const auto u = static_cast<uint64_t>(d);
    if (u != 0 && total > std::numeric_limits<uint64_t>::max() / u) {
      // Overflow unless a later dimension is zero.
      if (std::find(shape.begin(), shape.end(), 0) != shape.end()) return 0;
      return std::nullopt;
    }
    total *= u;
  }
  return total;
}

std::optional<uint64_t> as_u64(const json& v) {
  if (v.is_number_unsigned()) return v.get<uint64_t>();
  if (v.is_number_integer()) {
    const auto i = v.get<int64_t>();
    if (i >= 0) return static_cast<uint64_t>(i);
  }
  return std::nullopt;
}

// "model-00001-of-00002.safetensors" (any stem): how transformers names the shards of one
// checkpoint. Other .safetensors files (Mistral's consolidated.safetensors) are not shards.
bool is_shard_file_name(std::string_view name) {
  constexpr std::string_view kExt = ".safetensors";
  if (!name.ends_with(kExt)) return false;
  std::string_view stem = name.substr(0, name.size() - kExt.size());
  auto take_digits = [&stem]() {
    size_t n = 0;
    while (n < stem.size() && stem[stem.size() - 1 - n] >= '0' && stem[stem.size() - 1 - n] <= '9')
      ++n;
    stem.remove_suffix(n);
    return n > 0;
  };
  if (!take_digits() || !stem.ends_with("-of-")) return false;
  stem.remove_suffix(4);
  return take_digits() && stem.ends_with("-") && stem.size() > 1;
}

// Shard-named files in `dir`, sorted.
std::vector<std::string> shard_files_on_disk(const std::filesystem::path& dir) {
  std::vector<std::string> out;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(dir, ec)) {
    const std::string name = e.path().filename().string();
    if (is_shard_file_name(name)) out.push_back(name);
  }
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace

size_t TensorInfo::numel() const {
  size_t n = 1;
  for (int64_t d : shape) n *= static_cast<size_t>(d);
  return n;
}

// ---------------------------------------------------------------------------------------------
// SafetensorsFile

namespace {

// Opens and maps `p` read-only; the mapping stays valid without the descriptor.
std::pair<const std::byte*, size_t> map_file(const std::filesystem::path& p) {
  // Checked before opening (a FIFO would block the open), and opened non-blocking in case it
  // changes in between; fstat below checks what was opened.
  if (auto why = common::regular_file_problem(p)) fail(p, *why);
  int fd;
  do {
    fd = ::open(p.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  } while (fd < 0 && errno == EINTR);
  if (fd < 0) {
    const int err = errno;
    throw std::runtime_error("cannot open " + p.string() + ": " + std::strerror(err));
  }
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    throw std::runtime_error("cannot stat " + p.string() + ": " + std::strerror(err));
  }
  if (!S_ISREG(st.st_mode)) fail(p, "not a regular file");
  const auto file_size = static_cast<uint64_t>(st.st_size);
  if (file_size < 8) {
    fail(p, "file is " + std::to_string(file_size) +
                " bytes, too short for the 8-byte header length (truncated)");
  }
  void* m = ::mmap(nullptr, static_cast<size_t>(file_size), PROT_READ, MAP_PRIVATE, fd, 0);
  if (m == MAP_FAILED) {
    const int err = errno;
    throw std::runtime_error("cannot mmap " + p.string() + ": " + std::strerror(err));
  }
  return {static_cast<const std::byte*>(m), static_cast<size_t>(file_size)};
}

// The header's length N (little-endian u64, at most kMaxHeaderLen, inside the file) and its
// JSON: valid UTF-8, an object, no duplicate keys.
json read_header(const std::filesystem::path& p, const std::byte* map, uint64_t file_size,
                 uint64_t& n) {
  n = 0;
  unsigned char b[8];
  std::memcpy(b, map, 8);
  for (int i = 7; i >= 0; --i) n = (n << 8) | b[i];
  if (n > kMaxHeaderLen) {
    fail(p, "header length " + std::to_string(n) + " exceeds the limit of " +
                std::to_string(kMaxHeaderLen));
  }
  if (8 + n > file_size) {
    fail(p, "header length " + std::to_string(n) + " goes past the end of the file (" +
                std::to_string(file_size) + " bytes; truncated)");
  }
  const std::string_view header(reinterpret_cast<const char*>(map) + 8, static_cast<size_t>(n));
  if (auto bad = invalid_utf8_at(header)) {
    fail(p, "header is not valid UTF-8 (bad byte at header offset " + std::to_string(*bad) + ")");
  }
  json j;
  std::optional<std::string> dup_key, dup_top;
  try {
    j = parse_json_no_dups(header, dup_key, dup_top);
  } catch (const json::exception& e) {
    fail(p, std::string("header is not valid JSON: ") + e.what());
  }
  if (!j.is_object()) fail(p, "header is not a JSON object");
  if (dup_key) {
    if (*dup_top == *dup_key) fail(p, *dup_key, "duplicate key in the header");
    fail(p, *dup_top, "duplicate key '" + *dup_key + "' in its entry");
  }
  return j;
}

// __metadata__: an object of strings.
void read_metadata(const std::filesystem::path& p, const json& v,
                   std::map<std::string, std::string>& out) {
  if (!v.is_object()) fail(p, "__metadata__ is not an object");
  for (auto m_it = v.begin(); m_it != v.end(); ++m_it) {
    if (!m_it.value().is_string()) {
      fail(p, "__metadata__ entry '" + m_it.key() + "' is not a string (" +
                  m_it.value().type_name() + ")");
    }
    out.emplace(m_it.key(), m_it.value().get<std::string>());
  }
}

// One tensor entry: known dtype, non-negative shape, offsets spanning exactly its bytes.
TensorInfo read_entry(const std::filesystem::path& p, const std::string& name, const json& v) {
  if (!v.is_object()) fail(p, name, "entry is not an object");
  TensorInfo t;
  t.name = name;

  auto d = v.find("dtype");
  if (d == v.end() || !d->is_string()) fail(p, name, "missing or non-string dtype");
  auto dt = parse_dtype(d->get_ref<const std::string&>());
  if (!dt) fail(p, name, "unknown dtype '" + d->get<std::string>() + "'");
  t.dtype = *dt;

  auto s = v.find("shape");
  if (s == v.end() || !s->is_array()) fail(p, name, "shape is missing or not an array");
  for (size_t i = 0; i < s->size(); ++i) {
    auto u = as_u64((*s)[i]);
    if (!u || *u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      fail(
          p, name,
          "shape entry " + std::to_string(i) + " is not a non-negative integer: " + (*s)[i].dump());
    }
    t.shape.push_back(static_cast<int64_t>(*u));
  }

  auto o = v.find("data_offsets");
  if (o == v.end() || !o->is_array() || o->size() != 2) {
    fail(p, name, "data_offsets is missing or not a [begin, end] pair");
  }
  auto b = as_u64((*o)[0]);
  auto e = as_u64((*o)[1]);
  if (!b || !e) fail(p, name, "data_offsets entries must be non-negative integers");
  if (*b > *e) {
    fail(p, name, "data_offsets begin " + std::to_string(*b) + " > end " + std::to_string(*e));
  }
  t.begin = *b;
  t.end = *e;

  const size_t esz = dtype_size(t.dtype);
  auto need = checked_nbytes(t.shape, esz);
  if (!need) {
    fail(p, name,
         "size overflow: shape " + shape_str(t.shape) + " of " + std::string(dtype_name(t.dtype)) +
             " does not fit in 64 bits");
  }
  if (t.end - t.begin != *need) {
    fail(p, name,
         "size mismatch: data_offsets span " + std::to_string(t.end - t.begin) +
             " bytes but shape " + shape_str(t.shape) + " of " + std::string(dtype_name(t.dtype)) +
             " needs " + std::to_string(*need));
  }
  return t;
}

// Sorted by offset, the entries tile the buffer from 0 without hole or overlap, and the buffer
// ends exactly at the end of the file (`avail` bytes follow the header).
void check_buffer(const std::filesystem::path& p, std::vector<TensorInfo>& tensors,
                  uint64_t avail) {
  std::sort(tensors.begin(), tensors.end(), [](const TensorInfo& a, const TensorInfo& b2) {
    if (a.begin != b2.begin) return a.begin < b2.begin;
    if (a.end != b2.end) return a.end < b2.end;
    return a.name < b2.name;
  });
  uint64_t pos = 0;
  const TensorInfo* prev = nullptr;
  for (const auto& t : tensors) {
    if (t.begin > pos) {
      if (prev) {
        fail(p, t.name,
             "hole in the data buffer: begins at " + std::to_string(t.begin) + " but tensor '" +
                 prev->name + "' ends at " + std::to_string(pos));
      }
      fail(p, t.name,
           "hole in the data buffer: the first tensor begins at " + std::to_string(t.begin) +
               ", not 0");
    }
    if (t.begin < pos) {
      fail(p, t.name,
           "overlap: [" + std::to_string(t.begin) + ", " + std::to_string(t.end) +
               ") overlaps tensor '" + prev->name + "' ending at " + std::to_string(pos));
    }
    pos = t.end;
    prev = &t;
  }
  if (pos != avail) {
    if (pos < avail) {
      fail(p, "file size mismatch: " + std::to_string(avail - pos) +
                  " bytes of trailing data after the buffer end " + std::to_string(pos));
    }
    fail(p, "file size mismatch: the buffer ends at " + std::to_string(pos) + " but only " +
                std::to_string(avail) + " bytes follow the header (truncated)");
  }
}

// The entries (checked to tile the data buffer, sorted by offset) and metadata of a parsed
// header. `avail`: the bytes after the header block; nullopt for a file still to come, whose
// entries must then tile [0, their largest end) (returned in `avail`).
std::vector<TensorInfo> read_entries(const std::filesystem::path& p, const json& j,
                                     std::optional<uint64_t>& avail,
                                     std::map<std::string, std::string>& metadata) {
  std::vector<TensorInfo> tensors;
  tensors.reserve(j.size());
  for (auto it = j.begin(); it != j.end(); ++it) {
    if (it.key() == "__metadata__")
      read_metadata(p, it.value(), metadata);
    else
      tensors.push_back(read_entry(p, it.key(), it.value()));
  }
  if (!avail) {
    uint64_t end = 0;
    for (const auto& t : tensors) end = std::max(end, t.end);
    avail = end;
  }
  check_buffer(p, tensors, *avail);
  return tensors;
}

}  // namespace

std::unique_ptr<SafetensorsFile> SafetensorsFile::open(const std::filesystem::path& p) {
  std::unique_ptr<SafetensorsFile> f(new SafetensorsFile());
  f->path_ = p;
  std::tie(f->map_, f->size_) = map_file(p);
  uint64_t n = 0;
  const json j = read_header(p, f->map_, f->size_, n);
  f->data_start_ = static_cast<size_t>(8 + n);
  std::optional<uint64_t> avail = f->size_ - 8 - n;
  f->index_tensors(read_entries(p, j, avail, f->metadata_));
  return f;
}

std::unique_ptr<SafetensorsFile> SafetensorsFile::from_header(const std::filesystem::path& p,
                                                              std::string_view head) {
  std::unique_ptr<SafetensorsFile> f(new SafetensorsFile());
  f->path_ = p;
  f->head_.assign(head);
  if (head.size() < 8)
    fail(p, "header block is " + std::to_string(head.size()) +
                " bytes, too short for the 8-byte header length");
  uint64_t n = 0;
  const json j =
      read_header(p, reinterpret_cast<const std::byte*>(f->head_.data()), head.size(), n);
  if (8 + n != head.size())
    fail(p, "header block is " + std::to_string(head.size()) +
                " bytes, but its length field says " + std::to_string(8 + n));
  f->data_start_ = static_cast<size_t>(8 + n);
  std::optional<uint64_t> avail;
  f->index_tensors(read_entries(p, j, avail, f->metadata_));
  f->size_ = f->data_start_ + *avail;
  return f;
}

void SafetensorsFile::index_tensors(std::vector<TensorInfo> tensors) {
  for (size_t i = 0; i < tensors.size(); ++i) index_.emplace(tensors[i].name, i);
  tensors_ = std::move(tensors);
}

std::string_view SafetensorsFile::header_bytes() const {
  if (pending()) return head_;
  return {reinterpret_cast<const char*>(map_), data_start_};
}

SafetensorsFile::~SafetensorsFile() {
  if (map_) ::munmap(const_cast<std::byte*>(map_), size_);
  if (fd_ >= 0) ::close(fd_);
}

const TensorInfo* SafetensorsFile::find(std::string_view name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

std::span<const std::byte> SafetensorsFile::bytes(const TensorInfo& t) const {
  if (pending())
    throw std::logic_error(path_.string() + ": tensor '" + t.name +
                           "': the file is not there yet (opened from its header)");
  if (t.begin > t.end || t.end > size_ - data_start_) {
    throw std::out_of_range(path_.string() + ": tensor '" + t.name +
                            "': offsets outside this file's buffer");
  }
  return {map_ + data_start_ + t.begin, static_cast<size_t>(t.end - t.begin)};
}

std::vector<float> SafetensorsFile::read_f32(const TensorInfo& t) const {
  if (!is_float_dtype(t.dtype)) {
    fail(path_, t.name,
         "dtype " + std::string(dtype_name(t.dtype)) +
             " cannot be read as float32 (need F32, F16 or BF16)");
  }
  auto b = bytes(t);
  const size_t n = b.size() / dtype_size(t.dtype);
  std::vector<float> out(n);
  to_f32(t.dtype, b.data(), out.data(), n);
  return out;
}

void SafetensorsFile::release(const TensorInfo& t) const {
  auto b = bytes(t);
  const long page_l = ::sysconf(_SC_PAGESIZE);
  const uintptr_t page = page_l > 0 ? static_cast<uintptr_t>(page_l) : 4096;
  const auto lo = reinterpret_cast<uintptr_t>(b.data());
  const uintptr_t hi = lo + b.size();
  const uintptr_t start = (lo + page - 1) & ~(page - 1);
  const uintptr_t stop = hi & ~(page - 1);
  if (start < stop) {
    // Advisory only: failure just means the pages stay resident.
    ::madvise(reinterpret_cast<void*>(start), stop - start, MADV_DONTNEED);
  }
}

// ---------------------------------------------------------------------------------------------
// SafetensorsWriter

struct SafetensorsWriter::Impl {
  explicit Impl(std::filesystem::path p) : file(std::move(p)) {}
  AtomicFile file;
  std::filesystem::path path;
  std::vector<TensorSpec> specs;
  std::vector<uint64_t> sizes;
  size_t next = 0;
  bool broken = false;

  std::string where(std::string_view tensor) const {
    return path.string() + ": tensor '" + std::string(tensor) + "': ";
  }

  // Checks `name` is the next tensor to write and returns its index.
  size_t expect(std::string_view name) const {
    if (broken) throw std::logic_error(where(name) + "an earlier write failed");
    if (next >= specs.size()) {
      throw std::logic_error(where(name) + "written after all tensors of the spec");
    }
    if (specs[next].name != name) {
      throw std::logic_error(where(name) + "written out of order, expected tensor '" +
                             specs[next].name + "'");
    }
    return next;
  }

  void append(const void* data, size_t n) {
    try {
      file.write(data, n);
    } catch (...) {
      broken = true;
      throw;
    }
  }
};

SafetensorsWriter::SafetensorsWriter(std::filesystem::path final_path,
                                     std::vector<TensorSpec> specs,
                                     const std::map<std::string, std::string>& metadata) {
  // Validate everything before creating the temp file.
  const std::string ps = final_path.string();
  std::vector<uint64_t> sizes;
  {
    std::set<std::string_view> seen;
    for (const auto& s : specs) {
      const std::string where = ps + ": tensor '" + s.name + "': ";
      if (s.name == "__metadata__") throw std::invalid_argument(where + "reserved name");
      if (!seen.insert(s.name).second) throw std::invalid_argument(where + "duplicate name");
      for (int64_t d : s.shape) {
        if (d < 0) throw std::invalid_argument(where + "negative shape " + shape_str(s.shape));
      }
      auto nb = checked_nbytes(s.shape, dtype_size(s.dtype));
      if (!nb) throw std::invalid_argument(where + "size overflow " + shape_str(s.shape));
      sizes.push_back(*nb);
    }
  }
  nlohmann::ordered_json h = nlohmann::ordered_json::object();
  if (!metadata.empty()) {
    auto& m = h["__metadata__"] = nlohmann::ordered_json::object();
    for (const auto& [k, v] : metadata) m[k] = v;
  }
  uint64_t off = 0;
  for (size_t i = 0; i < specs.size(); ++i) {
    const auto& s = specs[i];
    nlohmann::ordered_json e = nlohmann::ordered_json::object();
    e["dtype"] = std::string(dtype_name(s.dtype));
    e["shape"] = s.shape;
    if (sizes[i] > std::numeric_limits<uint64_t>::max() - off) {
      throw std::invalid_argument(ps + ": tensor '" + s.name + "': total size overflow");
    }
    e["data_offsets"] = {off, off + sizes[i]};
    off += sizes[i];
    h[s.name] = std::move(e);
  }
  std::string text;
  try {
    text = h.dump();
  } catch (const nlohmann::json::exception& e) {
    throw std::invalid_argument(ps + ": cannot encode the header: " + e.what());
  }
  text.append((8 - text.size() % 8) % 8, ' ');

  impl_ = std::make_unique<Impl>(final_path);
  impl_->path = std::move(final_path);
  impl_->specs = std::move(specs);
  impl_->sizes = std::move(sizes);
  unsigned char len[8];
  uint64_t n = text.size();
  for (int i = 0; i < 8; ++i) len[i] = static_cast<unsigned char>((n >> (8 * i)) & 0xFF);
  impl_->append(len, 8);
  impl_->append(text.data(), text.size());
}

SafetensorsWriter::~SafetensorsWriter() = default;

void SafetensorsWriter::write(std::string_view name, std::span<const std::byte> data) {
  const size_t i = impl_->expect(name);
  if (data.size() != impl_->sizes[i]) {
    throw std::invalid_argument(impl_->where(name) + "got " + std::to_string(data.size()) +
                                " bytes, the spec needs " + std::to_string(impl_->sizes[i]));
  }
  impl_->append(data.data(), data.size());
  ++impl_->next;
}

void SafetensorsWriter::write_f32(std::string_view name, const float* data, size_t n) {
  const size_t i = impl_->expect(name);
  const TensorSpec& s = impl_->specs[i];
  if (!is_float_dtype(s.dtype)) {
    throw std::invalid_argument(impl_->where(name) + "write_f32 needs a float dtype, spec has " +
                                std::string(dtype_name(s.dtype)));
  }
  const size_t esz = dtype_size(s.dtype);
  if (n != impl_->sizes[i] / esz) {
    throw std::invalid_argument(impl_->where(name) + "got " + std::to_string(n) +
                                " values, the spec needs " + std::to_string(impl_->sizes[i] / esz));
  }
  constexpr size_t kChunk = 1 << 16;  // elements per conversion chunk
  std::vector<std::byte> buf(std::min(n, kChunk) * esz);
  for (size_t k = 0; k < n; k += kChunk) {
    const size_t m = std::min(kChunk, n - k);
    from_f32(s.dtype, data + k, buf.data(), m);
    impl_->append(buf.data(), m * esz);
  }
  ++impl_->next;
}

void SafetensorsWriter::commit() {
  if (impl_->broken) throw std::logic_error(impl_->path.string() + ": an earlier write failed");
  if (impl_->next < impl_->specs.size()) {
    throw std::logic_error(impl_->where(impl_->specs[impl_->next].name) +
                           "never written before commit");
  }
  impl_->file.commit();
}

void write_safetensors(const std::filesystem::path& p, const std::vector<OwnedTensor>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  std::vector<TensorSpec> specs;
  specs.reserve(tensors.size());
  for (const auto& t : tensors) specs.push_back(t.spec);
  SafetensorsWriter w(p, std::move(specs), metadata);
  for (const auto& t : tensors) {
    const auto nb = checked_nbytes(t.spec.shape, dtype_size(t.spec.dtype)).value_or(0);
    if (t.data.size() == nb) {
      w.write(t.spec.name, t.data);  // raw bytes already in the spec dtype
    } else if (is_float_dtype(t.spec.dtype) && t.data.size() % 4 == 0 &&
               t.data.size() / 4 == nb / dtype_size(t.spec.dtype)) {
      // float32 values to convert to the spec dtype; copy out to keep alignment right.
      const size_t n = t.data.size() / 4;
      std::vector<float> f(n);
      if (n) std::memcpy(f.data(), t.data.data(), n * 4);
      w.write_f32(t.spec.name, f.data(), n);
    } else {
      throw std::invalid_argument(p.string() + ": tensor '" + t.spec.name +
                                  "': " + std::to_string(t.data.size()) +
                                  " bytes are neither the spec dtype's size nor float32 values");
    }
  }
  w.commit();
}

// ---------------------------------------------------------------------------------------------
// Checkpoint

namespace {

// Whether the checkpoint file `p` is there: false when nothing (not even a dangling link) is;
// throws naming `p` when it is there but not a regular file (FIFO, device, socket, directory,
// symlink loop, dangling link), before anything opens it.
bool checkpoint_file_present(const std::filesystem::path& p) {
  auto why = common::regular_file_problem(p);
  if (!why) return true;
  if (*why == "does not exist") return false;
  fail(p, *why);
}

// Shard `name` of `dir`: the file when it is there, else from its header block in `pending`
// (nullptr when neither). A file that is there and also pending must have that header.
std::shared_ptr<SafetensorsFile> open_shard(const std::filesystem::path& dir,
                                            const std::string& name,
                                            const std::map<std::string, std::string>& pending) {
  const auto p = dir / name;
  const auto it = pending.find(name);
  if (!checkpoint_file_present(p)) {
    if (it == pending.end()) return nullptr;
    return SafetensorsFile::from_header(p, it->second);
  }
  std::shared_ptr<SafetensorsFile> f = SafetensorsFile::open(p);
  if (it != pending.end() && f->header_bytes() != it->second)
    fail(p, "its header is not the one fetched ahead of the download (" +
                std::to_string(f->header_bytes().size()) + " bytes against " +
                std::to_string(it->second.size()) + "): the file changed upstream");
  return f;
}

}  // namespace

Checkpoint Checkpoint::open(const std::filesystem::path& dir,
                            const std::map<std::string, std::string>& pending) {
  Checkpoint c;
  c.dir_ = dir;
  const auto index = dir / "model.safetensors.index.json";
  if (checkpoint_file_present(index)) {
    c.index_path_ = index;
    c.sharded_ = true;
    const std::string text = read_file(index);
    if (auto bad = invalid_utf8_at(text)) {
      fail(index, "not valid UTF-8 (bad byte at offset " + std::to_string(*bad) + ")");
    }
    json j;
    std::optional<std::string> dup_key, dup_top;
    try {
      j = parse_json_no_dups(text, dup_key, dup_top);
    } catch (const json::exception& e) {
      fail(index, std::string("not valid JSON: ") + e.what());
    }
    if (!j.is_object()) fail(index, "not a JSON object");
    if (dup_key) fail(index, "duplicate key '" + *dup_key + "'");
    auto wm = j.find("weight_map");
    if (wm == j.end() || !wm->is_object()) fail(index, "weight_map is missing or not an object");

    std::map<std::string, std::string> map;  // tensor -> shard
    std::set<std::string> names;
    for (auto it = wm->begin(); it != wm->end(); ++it) {
      if (!it.value().is_string()) fail(index, it.key(), "weight_map value is not a string");
      const auto& s = it.value().get_ref<const std::string&>();
      if (s.empty() || s.find('/') != std::string::npos || s.find('\\') != std::string::npos ||
          s.find("..") != std::string::npos || s.find('\0') != std::string::npos || s == ".") {
        fail(index, it.key(), "invalid shard name '" + s + "' (must be a plain file name)");
      }
      map.emplace(it.key(), s);
      names.insert(s);
    }
    for (const auto& s : names) {
      const auto sp = dir / s;
      if (!checkpoint_file_present(sp) && !pending.count(s)) {
        fail(index, "shard '" + s + "' listed in weight_map is missing (" + sp.string() + ")");
      }
    }
    std::map<std::string_view, size_t> where;  // tensor -> shard index
    for (const auto& s : names) {
      c.shard_names_.push_back(s);
      c.shards_.push_back(open_shard(dir, s, pending));
      const size_t i = c.shards_.size() - 1;
      for (const auto& t : c.shards_.back()->tensors()) {
        auto [it, fresh] = where.emplace(t.name, i);
        if (!fresh) {
          fail(index, t.name,
               "present in two shards, '" + c.shard_names_[it->second] + "' and '" + s + "'");
        }
        if (!map.count(t.name)) fail(index, t.name, "in shard '" + s + "' but not in weight_map");
      }
    }
    for (const auto& [t, s] : map) {
      auto it = where.find(t);
      if (it == where.end() || c.shard_names_[it->second] != s) {
        fail(index, t, "listed in weight_map under shard '" + s + "' but absent from it");
      }
    }
    // A shard on disk that the index does not list would silently lose its tensors.
    for (const auto& f : shard_files_on_disk(dir))
      if (!names.count(f))
        fail(index, "shard file '" + f + "' is in the directory but not in weight_map (its " +
                        "tensors would be dropped)");
    return c;
  }
  if (const auto stray = shard_files_on_disk(dir); !stray.empty())
    fail(dir, "shard file '" + stray.front() + "' without model.safetensors.index.json (" +
                  "the index that lists the shards is missing)");
  if (auto f = open_shard(dir, "model.safetensors", pending)) {
    c.shard_names_.push_back("model.safetensors");
    c.shards_.push_back(std::move(f));
    return c;
  }
  fail(dir, "no model.safetensors or model.safetensors.index.json");
}

void Checkpoint::load(size_t i) {
  if (!shards_[i]->pending()) return;
  const auto p = dir_ / shard_names_[i];
  if (!checkpoint_file_present(p)) fail(p, "the shard is still not there");
  std::shared_ptr<SafetensorsFile> was = shards_[i];
  shards_[i] =
      open_shard(dir_, shard_names_[i], {{shard_names_[i], std::string(was->header_bytes())}});
  loaded_from_.push_back(std::move(was));
}

std::vector<std::pair<size_t, const TensorInfo*>> Checkpoint::all_tensors() const {
  std::vector<std::pair<size_t, const TensorInfo*>> out;
  for (size_t i = 0; i < shards_.size(); ++i) {
    for (const auto& t : shards_[i]->tensors()) out.emplace_back(i, &t);
  }
  return out;
}

}  // namespace loftqd::model
