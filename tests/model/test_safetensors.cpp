// safetensors reader/writer and sharded checkpoints: round trips, and every rejection rule on a
// file crafted byte by byte.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <functional>
#include <initializer_list>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "model/safetensors.h"
#include "support/test_util.h"

namespace loftqd::model {
namespace {

namespace fs = std::filesystem;
using loftqd::testing::safetensors_header_block;
using loftqd::testing::slurp;
using loftqd::testing::spit;
using loftqd::testing::TempDir;
using ::testing::AllOf;
using ::testing::HasSubstr;

// 8-byte little-endian length + header + buffer. `n` overrides the length field.
std::string raw_file(const std::string& header, const std::string& buffer,
                     std::optional<uint64_t> n = std::nullopt) {
  const uint64_t len = n.value_or(header.size());
  std::string out;
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((len >> (8 * i)) & 0xFF));
  return out + header + buffer;
}

std::string zeros(size_t n) {
  return std::string(n, '\0');
}

// The message of the FormatError `fn` throws ("" and a test failure when none).
std::string format_error(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const FormatError& e) {
    return e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "expected FormatError, got: " << e.what();
    return "";
  }
  ADD_FAILURE() << "expected FormatError, nothing thrown";
  return "";
}

// Writes `header`+`buffer` as bad.safetensors and checks that opening it fails with a message
// that names the file and contains every string in `want`.
void expect_rejected(const std::string& header, const std::string& buffer,
                     std::initializer_list<std::string> want,
                     std::optional<uint64_t> n = std::nullopt) {
  TempDir dir;
  const auto p = dir / "bad.safetensors";
  spit(p, raw_file(header, buffer, n));
  const std::string msg = format_error([&] { SafetensorsFile::open(p); });
  EXPECT_THAT(msg, HasSubstr(p.string() + ": "));
  for (const auto& w : want) EXPECT_THAT(msg, HasSubstr(w)) << "header: " << header;
}

std::vector<std::byte> as_bytes(const std::string& s) {
  std::vector<std::byte> v(s.size());
  if (!s.empty()) std::memcpy(v.data(), s.data(), s.size());
  return v;
}

std::string bytes_str(std::span<const std::byte> b) {
  return std::string(reinterpret_cast<const char*>(b.data()), b.size());
}

// ----------------------------------------------------------------------------------------------
// Round trips

TEST(SafetensorsRoundTrip, AllDtypesThroughWriterAndReader) {
  TempDir dir;
  const auto p = dir / "m.safetensors";
  const std::vector<float> w32 = {1.5f, -2.25f, 3.0f, 0.0f, -0.0f, 1e-3f};
  const std::vector<float> w16 = {1.0f, -2.0f, 65504.0f, 0.5f};         // exact in f16
  const std::vector<float> wb16 = {1.0f, -3.0f, 0.333984375f, 256.0f};  // exact in bf16
  const std::string i64 = std::string("\x01\0\0\0\0\0\0\0\xff\xff\xff\xff\xff\xff\xff\xff", 16);
  const std::string flags = std::string("\x01\x00\x01", 3);
  const std::string u8 = "\x07\x08\x09\x0a\x0b";
  {
    SafetensorsWriter w(p,
                        {{"z.weight", DType::F32, {2, 3}},
                         {"a.half", DType::F16, {4}},
                         {"m.bf", DType::BF16, {2, 2}},
                         {"ids", DType::I64, {2}},
                         {"mask", DType::BOOL, {3}},
                         {"bytes", DType::U8, {5}},
                         {"scalar", DType::F32, {}},
                         {"empty", DType::F16, {0, 7}}},
                        {{"format", "pt"}, {"note", "héllo"}});
    w.write_f32("z.weight", w32.data(), w32.size());
    w.write_f32("a.half", w16.data(), w16.size());
    w.write_f32("m.bf", wb16.data(), wb16.size());
    w.write("ids", as_bytes(i64));
    w.write("mask", as_bytes(flags));
    w.write("bytes", as_bytes(u8));
    const float s = 42.0f;
    w.write_f32("scalar", &s, 1);
    w.write_f32("empty", nullptr, 0);
    w.commit();
  }
  auto f = SafetensorsFile::open(p);
  EXPECT_EQ(f->path(), p);
  ASSERT_EQ(f->tensors().size(), 8u);
  // Offset order == spec order here.
  const char* order[] = {"z.weight", "a.half", "m.bf", "ids", "mask", "bytes", "scalar", "empty"};
  for (size_t i = 0; i < 8; ++i) EXPECT_EQ(f->tensors()[i].name, order[i]);
  EXPECT_EQ(f->metadata().at("format"), "pt");
  EXPECT_EQ(f->metadata().at("note"), "héllo");

  const TensorInfo* t = f->find("z.weight");
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->dtype, DType::F32);
  EXPECT_EQ(t->shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(t->begin, 0u);
  EXPECT_EQ(t->end, 24u);
  EXPECT_EQ(t->numel(), 6u);
  EXPECT_EQ(f->read_f32(*t), w32);

  t = f->find("a.half");
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->dtype, DType::F16);
  EXPECT_EQ(t->nbytes(), 8u);
  EXPECT_EQ(f->read_f32(*t), w16);
  EXPECT_EQ(bytes_str(f->bytes(*t)).substr(0, 2), std::string("\x00\x3c", 2));

  t = f->find("m.bf");
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->dtype, DType::BF16);
  EXPECT_EQ(f->read_f32(*t), wb16);
  EXPECT_EQ(bytes_str(f->bytes(*t)).substr(0, 2), std::string("\x80\x3f", 2));

  EXPECT_EQ(bytes_str(f->bytes(*f->find("ids"))), i64);
  EXPECT_EQ(f->find("ids")->dtype, DType::I64);
  EXPECT_EQ(bytes_str(f->bytes(*f->find("mask"))), flags);
  EXPECT_EQ(f->find("mask")->dtype, DType::BOOL);
  EXPECT_EQ(bytes_str(f->bytes(*f->find("bytes"))), u8);
  EXPECT_EQ(f->find("bytes")->dtype, DType::U8);

  t = f->find("scalar");
  ASSERT_NE(t, nullptr);
  EXPECT_TRUE(t->shape.empty());
  EXPECT_EQ(t->numel(), 1u);
  EXPECT_EQ(f->read_f32(*t), std::vector<float>{42.0f});

  t = f->find("empty");
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->numel(), 0u);
  EXPECT_TRUE(f->read_f32(*t).empty());
  EXPECT_EQ(t->begin, t->end);

  EXPECT_EQ(f->find("nope"), nullptr);
}

TEST(SafetensorsRoundTrip, HeaderLayout) {
  TempDir dir;
  const auto p = dir / "h.safetensors";
  std::vector<float> v = {1, 2};
  {
    SafetensorsWriter w(p, {{"b", DType::F32, {2}}, {"a", DType::F32, {2}}}, {{"k", "v"}});
    w.write_f32("b", v.data(), 2);
    w.write_f32("a", v.data(), 2);
    w.commit();
  }
  const std::string s = slurp(p);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(s[i]);
  EXPECT_EQ(n % 8, 0u);
  EXPECT_EQ(s.size(), 8 + n + 16);
  const std::string header = s.substr(8, n);
  // Metadata first, then tensors in spec order, each with dtype/shape/data_offsets.
  EXPECT_EQ(header.rfind("{\"__metadata__\":{\"k\":\"v\"},\"b\":", 0), 0u) << header;
  EXPECT_LT(header.find("\"b\""), header.find("\"a\""));
  EXPECT_NE(header.find("\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]"),
            std::string::npos)
      << header;
  EXPECT_NE(header.find("\"data_offsets\":[8,16]"), std::string::npos) << header;
  // Only spaces after the JSON.
  const size_t close = header.find_last_of('}');
  EXPECT_EQ(header.find_first_not_of(' ', close + 1), std::string::npos);
}

TEST(SafetensorsRoundTrip, HeaderPaddedToMultipleOf8ForEveryLength) {
  TempDir dir;
  for (int len = 1; len <= 12; ++len) {
    const auto p = dir / ("p" + std::to_string(len) + ".safetensors");
    const std::string name(static_cast<size_t>(len), 'x');
    const std::vector<float> v = {7.0f};
    SafetensorsWriter w(p, {{name, DType::BF16, {1}}});
    w.write_f32(name, v.data(), 1);
    w.commit();
    const std::string s = slurp(p);
    uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(s[i]);
    EXPECT_EQ(n % 8, 0u) << len;
    auto f = SafetensorsFile::open(p);
    ASSERT_EQ(f->tensors().size(), 1u);
    EXPECT_EQ(f->read_f32(f->tensors()[0]), v);
  }
}

TEST(SafetensorsRoundTrip, LargeTensorConvertedInChunks) {
  TempDir dir;
  const auto p = dir / "big.safetensors";
  std::vector<float> v(200003);
  for (size_t i = 0; i < v.size(); ++i) v[i] = static_cast<float>(i % 256) * 0.5f - 64.0f;
  {
    SafetensorsWriter w(p, {{"w", DType::BF16, {200003}}, {"h", DType::F16, {200003}}});
    w.write_f32("w", v.data(), v.size());
    w.write_f32("h", v.data(), v.size());
    w.commit();
  }
  auto f = SafetensorsFile::open(p);
  EXPECT_EQ(f->read_f32(*f->find("w")), v);  // all values exact in bf16 and f16
  EXPECT_EQ(f->read_f32(*f->find("h")), v);
  // release() drops pages; the data reads back the same afterwards.
  f->release(*f->find("w"));
  f->release(*f->find("h"));
  EXPECT_EQ(f->read_f32(*f->find("w")), v);
}

TEST(SafetensorsRoundTrip, RoundsToTheSpecDtype) {
  TempDir dir;
  const auto p = dir / "r.safetensors";
  const std::vector<float> v = {0.1f, 1e6f, 1e-9f};
  {
    SafetensorsWriter w(p, {{"h", DType::F16, {3}}, {"b", DType::BF16, {3}}});
    w.write_f32("h", v.data(), 3);
    w.write_f32("b", v.data(), 3);
    w.commit();
  }
  auto f = SafetensorsFile::open(p);
  const auto h = f->read_f32(*f->find("h"));
  EXPECT_EQ(h[0], 0.0999755859375f);
  EXPECT_TRUE(std::isinf(h[1]));
  EXPECT_EQ(h[2], 0.0f);  // below half of the smallest f16 subnormal
  const auto b = f->read_f32(*f->find("b"));
  EXPECT_EQ(b[0], 0.10009765625f);
  EXPECT_EQ(b[1], 999424.0f);
}

TEST(SafetensorsRoundTrip, OffsetOrderNotSpecOrderInReader) {
  // Hand-written header with keys in another order than the offsets.
  TempDir dir;
  const auto p = dir / "o.safetensors";
  std::string header = R"({"b":{"dtype":"U8","shape":[2],"data_offsets":[2,4]},)"
                       R"("a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}})";
  spit(p, raw_file(header, "ABCD"));
  auto f = SafetensorsFile::open(p);
  ASSERT_EQ(f->tensors().size(), 2u);
  EXPECT_EQ(f->tensors()[0].name, "a");
  EXPECT_EQ(f->tensors()[1].name, "b");
  EXPECT_EQ(bytes_str(f->bytes(*f->find("b"))), "CD");
  EXPECT_TRUE(f->metadata().empty());
}

TEST(SafetensorsRoundTrip, EmptyFilesAndZeroSizedTensors) {
  TempDir dir;
  write_safetensors(dir / "e.safetensors", {});
  auto f = SafetensorsFile::open(dir / "e.safetensors");
  EXPECT_TRUE(f->tensors().empty());

  spit(dir / "h.safetensors", raw_file("{}      ", ""));
  EXPECT_TRUE(SafetensorsFile::open(dir / "h.safetensors")->tensors().empty());

  // Two empty tensors at the same offset, a zero-sized dimension with a huge other dimension.
  spit(dir / "z.safetensors",
       raw_file(R"({"e1":{"dtype":"F32","shape":[0],"data_offsets":[0,0]},)"
                R"("e2":{"dtype":"I64","shape":[0,4611686018427387904],"data_offsets":[0,0]},)"
                R"("x":{"dtype":"F16","shape":[1],"data_offsets":[0,2]},)"
                R"("e3":{"dtype":"BF16","shape":[3,0],"data_offsets":[2,2]}})",
                zeros(2)));
  auto z = SafetensorsFile::open(dir / "z.safetensors");
  EXPECT_EQ(z->tensors().size(), 4u);
  EXPECT_EQ(z->find("e2")->numel(), 0u);
}

TEST(SafetensorsRoundTrip, WriteSafetensorsRawAndFloat32Data) {
  TempDir dir;
  const auto p = dir / "c.safetensors";
  const std::vector<float> vals = {1.0f, -0.5f};
  std::vector<std::byte> f32bytes(8);
  std::memcpy(f32bytes.data(), vals.data(), 8);
  std::vector<OwnedTensor> ts;
  ts.push_back({{"raw_bf16", DType::BF16, {2}}, as_bytes(std::string("\x80\x3f\x00\xc0", 4))});
  ts.push_back({{"f32_for_bf16", DType::BF16, {2}}, f32bytes});  // float32 values, converted
  ts.push_back({{"ints", DType::I32, {1}}, as_bytes(std::string("\x05\0\0\0", 4))});
  write_safetensors(p, ts, {{"format", "pt"}});
  auto f = SafetensorsFile::open(p);
  EXPECT_EQ(f->read_f32(*f->find("raw_bf16")), (std::vector<float>{1.0f, -2.0f}));
  EXPECT_EQ(f->read_f32(*f->find("f32_for_bf16")), vals);
  EXPECT_EQ(bytes_str(f->bytes(*f->find("ints"))), std::string("\x05\0\0\0", 4));
  EXPECT_EQ(f->metadata().at("format"), "pt");

  std::vector<OwnedTensor> bad;
  bad.push_back({{"odd", DType::I32, {2}}, as_bytes("abc")});
  EXPECT_THROW(write_safetensors(dir / "bad.safetensors", bad), std::invalid_argument);
  EXPECT_FALSE(fs::exists(dir / "bad.safetensors"));
}

// ----------------------------------------------------------------------------------------------
// Writer misuse

std::string error_text(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const std::exception& e) {
    return e.what();
  }
  ADD_FAILURE() << "nothing thrown";
  return "";
}

TEST(SafetensorsWriter, RejectsOutOfOrderWrongSizeAndMissingTensors) {
  TempDir dir;
  const auto p = dir / "w.safetensors";
  {
    SafetensorsWriter w(p, {{"first", DType::F32, {2}}, {"second", DType::U8, {3}}});
    const float v[2] = {1, 2};
    auto msg = error_text([&] { w.write_f32("second", v, 2); });
    EXPECT_THAT(msg, HasSubstr("second"));
    EXPECT_THAT(msg, HasSubstr("order"));
    EXPECT_THROW(w.write_f32("second", v, 2), std::logic_error);
    msg = error_text([&] { w.write_f32("first", v, 1); });
    EXPECT_THAT(msg, HasSubstr("'first'"));
    EXPECT_THROW(w.write("first", as_bytes("1234567")), std::logic_error);
    w.write_f32("first", v, 2);
    // write_f32 into a non-float tensor.
    EXPECT_THROW(w.write_f32("second", v, 2), std::invalid_argument);
    msg = error_text([&] { w.commit(); });
    EXPECT_THAT(msg, HasSubstr("'second'"));
    EXPECT_THAT(msg, HasSubstr(p.string()));
    EXPECT_THROW(w.commit(), std::logic_error);
  }
  // Abandoned: nothing left behind.
  EXPECT_TRUE(fs::is_empty(dir.path()));
}

TEST(SafetensorsWriter, RejectsBadSpecs) {
  TempDir dir;
  const auto p = dir / "w.safetensors";
  auto msg = error_text([&] {
    SafetensorsWriter w(p, {{"dup", DType::F32, {1}}, {"dup", DType::F32, {1}}});
  });
  EXPECT_THAT(msg, HasSubstr("'dup'"));
  EXPECT_THAT(msg, HasSubstr("duplicate"));
  EXPECT_THROW((void)SafetensorsWriter(p, {{"neg", DType::F32, {-1}}}), std::invalid_argument);
  EXPECT_THROW((void)SafetensorsWriter(p, {{"__metadata__", DType::F32, {1}}}),
               std::invalid_argument);
  EXPECT_THROW((void)SafetensorsWriter(p, {{"huge", DType::F32, {int64_t{1} << 62, 8}}}),
               std::invalid_argument);
  EXPECT_TRUE(fs::is_empty(dir.path()));
}

TEST(SafetensorsWriter, WriteAfterAllTensors) {
  TempDir dir;
  SafetensorsWriter w(dir / "x.safetensors", {{"a", DType::U8, {1}}});
  w.write("a", as_bytes("x"));
  EXPECT_THROW(w.write("a", as_bytes("x")), std::logic_error);
  w.commit();
  EXPECT_EQ(SafetensorsFile::open(dir / "x.safetensors")->tensors().size(), 1u);
}

// ----------------------------------------------------------------------------------------------
// Reader rejections: each rule, on a file written by hand.

const std::string kOk = R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";

TEST(SafetensorsReject, ValidBaselineOpens) {
  TempDir dir;
  spit(dir / "ok.safetensors", raw_file(kOk, zeros(8)));
  EXPECT_EQ(SafetensorsFile::open(dir / "ok.safetensors")->tensors().size(), 1u);
}

TEST(SafetensorsReject, FileShorterThan8Bytes) {
  TempDir dir;
  for (size_t len : {0, 1, 7}) {
    const auto p = dir / ("short" + std::to_string(len));
    spit(p, std::string(len, '\x01'));
    const std::string msg = format_error([&] { SafetensorsFile::open(p); });
    EXPECT_THAT(msg, HasSubstr(p.string() + ": "));
    EXPECT_THAT(msg, HasSubstr("too short"));
    EXPECT_THAT(msg, HasSubstr("header length"));
  }
}

TEST(SafetensorsReject, HeaderLengthOverLimit) {
  expect_rejected(kOk, zeros(8), {"header length", "100000001", "limit"}, 100000001);
  expect_rejected(kOk, zeros(8), {"header length", "limit"}, ~uint64_t{0});
}

TEST(SafetensorsReject, HeaderLengthBeyondFileSize) {
  expect_rejected(kOk, zeros(8), {"header length", "past the end"}, 1000);
  expect_rejected("", "", {"header length", "past the end"}, 1);
}

TEST(SafetensorsReject, HeaderNotUtf8) {
  expect_rejected("{\"t\xff\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,0]}}", "",
                  {"UTF-8"});
  // Overlong encoding of '/' and an encoded surrogate are not UTF-8 either.
  expect_rejected("{\"\xc0\xaf\":{}}", "", {"UTF-8"});
  expect_rejected("{\"\xed\xa0\x80\":{}}", "", {"UTF-8"});
  expect_rejected("{\"t\xe2\x82\":{}}", "", {"UTF-8"});  // truncated sequence
}

TEST(SafetensorsReject, HeaderNotJson) {
  expect_rejected("{\"t\": {", "", {"not valid JSON"});
  expect_rejected("", "", {"not valid JSON"});
  expect_rejected(kOk + "x", zeros(8), {"not valid JSON"});
}

TEST(SafetensorsReject, HeaderNotAnObject) {
  expect_rejected("[1, 2]  ", "", {"not a JSON object"});
  expect_rejected("\"str\"", "", {"not a JSON object"});
}

TEST(SafetensorsReject, DuplicateTensorName) {
  expect_rejected(R"({"t":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                  R"("t":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                  zeros(8), {"tensor 't'", "duplicate"});
}

TEST(SafetensorsReject, DuplicateKeyInsideEntry) {
  expect_rejected(R"({"t":{"dtype":"F32","dtype":"F16","shape":[1],"data_offsets":[0,4]}})",
                  zeros(4), {"tensor 't'", "duplicate", "dtype"});
}

TEST(SafetensorsReject, EntryNotAnObject) {
  expect_rejected(R"({"t":[1,2,3]})", "", {"tensor 't'", "not an object"});
}

TEST(SafetensorsReject, UnknownDtype) {
  expect_rejected(R"({"t":{"dtype":"F33","shape":[1],"data_offsets":[0,4]}})", zeros(4),
                  {"tensor 't'", "dtype", "F33"});
  expect_rejected(R"({"t":{"dtype":"f32","shape":[1],"data_offsets":[0,4]}})", zeros(4),
                  {"tensor 't'", "unknown dtype"});
}

TEST(SafetensorsReject, MissingOrNonStringDtype) {
  expect_rejected(R"({"t":{"shape":[1],"data_offsets":[0,4]}})", zeros(4), {"tensor 't'", "dtype"});
  expect_rejected(R"({"t":{"dtype":4,"shape":[1],"data_offsets":[0,4]}})", zeros(4),
                  {"tensor 't'", "dtype"});
}

TEST(SafetensorsReject, ShapeNotNonNegativeIntegers) {
  expect_rejected(R"({"t":{"dtype":"U8","shape":[-1],"data_offsets":[0,0]}})", "",
                  {"tensor 't'", "shape"});
  expect_rejected(R"({"t":{"dtype":"U8","shape":[2.0],"data_offsets":[0,2]}})", zeros(2),
                  {"tensor 't'", "shape"});
  expect_rejected(R"({"t":{"dtype":"U8","shape":["2"],"data_offsets":[0,2]}})", zeros(2),
                  {"tensor 't'", "shape"});
  expect_rejected(R"({"t":{"dtype":"U8","shape":[18446744073709551615],"data_offsets":[0,0]}})", "",
                  {"tensor 't'", "shape"});
}

TEST(SafetensorsReject, ShapeMissingOrNotArray) {
  expect_rejected(R"({"t":{"dtype":"U8","data_offsets":[0,1]}})", zeros(1),
                  {"tensor 't'", "shape"});
  expect_rejected(R"({"t":{"dtype":"U8","shape":1,"data_offsets":[0,1]}})", zeros(1),
                  {"tensor 't'", "shape"});
}

TEST(SafetensorsReject, DataOffsetsMalformed) {
  expect_rejected(R"({"t":{"dtype":"U8","shape":[1]}})", zeros(1), {"tensor 't'", "data_offsets"});
  expect_rejected(R"({"t":{"dtype":"U8","shape":[1],"data_offsets":[0]}})", zeros(1),
                  {"tensor 't'", "data_offsets"});
  expect_rejected(R"({"t":{"dtype":"U8","shape":[1],"data_offsets":[0,1,2]}})", zeros(1),
                  {"tensor 't'", "data_offsets"});
  expect_rejected(R"({"t":{"dtype":"U8","shape":[1],"data_offsets":[-1,0]}})", zeros(1),
                  {"tensor 't'", "data_offsets"});
  expect_rejected(R"({"t":{"dtype":"U8","shape":[1],"data_offsets":[0,"1"]}})", zeros(1),
                  {"tensor 't'", "data_offsets"});
}

TEST(SafetensorsReject, DataOffsetsBeginAfterEnd) {
  expect_rejected(R"({"t":{"dtype":"U8","shape":[0],"data_offsets":[4,0]}})", zeros(4),
                  {"tensor 't'", "begin 4 > end 0"});
}

TEST(SafetensorsReject, SizeMismatch) {
  expect_rejected(R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}})", zeros(4),
                  {"tensor 't'", "size mismatch", "needs 8"});
  expect_rejected(R"({"t":{"dtype":"BF16","shape":[],"data_offsets":[0,4]}})", zeros(4),
                  {"tensor 't'", "size mismatch", "needs 2"});
}

TEST(SafetensorsReject, SizeOverflow) {
  expect_rejected(R"({"t":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,0]}})",
                  "", {"tensor 't'", "size overflow"});
  expect_rejected(R"({"t":{"dtype":"F64","shape":[2305843009213693952],"data_offsets":[0,0]}})", "",
                  {"tensor 't'", "size overflow"});
}

TEST(SafetensorsReject, HoleAtStart) {
  expect_rejected(R"({"t":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", zeros(8),
                  {"tensor 't'", "hole", "not 0"});
}

TEST(SafetensorsReject, HoleBetweenTensors) {
  expect_rejected(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                  R"("b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})",
                  zeros(12), {"tensor 'b'", "hole", "'a'"});
}

TEST(SafetensorsReject, OverlappingTensors) {
  expect_rejected(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                  R"("b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                  zeros(8), {"tensor 'b'", "overlap", "'a'"});
  // Same range twice.
  expect_rejected(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                  R"("b":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})",
                  zeros(4), {"tensor 'b'", "overlap", "'a'"});
}

TEST(SafetensorsReject, TrailingGarbage) {
  expect_rejected(kOk, zeros(8) + "garbage", {"file size", "7 bytes of trailing"});
}

TEST(SafetensorsReject, BufferTruncated) {
  expect_rejected(kOk, zeros(5), {"file size", "truncated", "ends at 8"});
  expect_rejected(R"({"t":{"dtype":"U8","shape":[9223372036854775807],)"
                  R"("data_offsets":[0,9223372036854775807]}})",
                  zeros(5), {"truncated", "9223372036854775807"});
}

TEST(SafetensorsReject, MetadataValueNotString) {
  expect_rejected(R"({"__metadata__":{"format":"pt","n":1}})", "",
                  {"__metadata__", "'n'", "not a string"});
  expect_rejected(R"({"__metadata__":{"nested":{"a":"b"}}})", "",
                  {"__metadata__", "'nested'", "not a string"});
}

TEST(SafetensorsReject, MetadataNotObject) {
  expect_rejected(R"({"__metadata__":["a"]})", "", {"__metadata__", "not an object"});
}

TEST(SafetensorsReject, ReadF32OfNonFloatDtypeNamesFileAndTensor) {
  TempDir dir;
  const auto p = dir / "i.safetensors";
  spit(p, raw_file(R"({"ids":{"dtype":"I64","shape":[1],"data_offsets":[0,8]}})", zeros(8)));
  auto f = SafetensorsFile::open(p);
  const std::string msg = format_error([&] { f->read_f32(*f->find("ids")); });
  EXPECT_THAT(msg, HasSubstr(p.string() + ": tensor 'ids': "));
  EXPECT_THAT(msg, HasSubstr("dtype I64"));
}

TEST(SafetensorsReject, MissingFileIsARuntimeError) {
  TempDir dir;
  try {
    SafetensorsFile::open(dir / "missing.safetensors");
    FAIL() << "no exception";
  } catch (const std::runtime_error& e) {
    EXPECT_THAT(e.what(), HasSubstr((dir / "missing.safetensors").string()));
  }
}

// ----------------------------------------------------------------------------------------------
// Checkpoints

void write_u8_shard(const fs::path& p, const std::vector<std::string>& names) {
  std::vector<OwnedTensor> ts;
  for (const auto& n : names) ts.push_back({{n, DType::U8, {1}}, as_bytes("x")});
  write_safetensors(p, ts);
}

std::string index_json(const std::vector<std::pair<std::string, std::string>>& map) {
  std::string s = R"({"metadata":{"total_size":3},"weight_map":{)";
  for (size_t i = 0; i < map.size(); ++i) {
    if (i) s += ",";
    s += "\"" + map[i].first + "\":\"" + map[i].second + "\"";
  }
  return s + "}}";
}

const char* kShard1 = "model-00001-of-00002.safetensors";
const char* kShard2 = "model-00002-of-00002.safetensors";

TEST(Checkpoint, SingleFile) {
  TempDir dir;
  write_u8_shard(dir / "model.safetensors", {"a", "b"});
  auto c = Checkpoint::open(dir.path());
  EXPECT_FALSE(c.sharded());
  EXPECT_EQ(c.dir(), dir.path());
  EXPECT_TRUE(c.index_path().empty());
  EXPECT_EQ(c.shard_names(), std::vector<std::string>{"model.safetensors"});
  ASSERT_EQ(c.num_shards(), 1u);
  EXPECT_EQ(c.shard(0).tensors().size(), 2u);
  auto all = c.all_tensors();
  ASSERT_EQ(all.size(), 2u);
  EXPECT_EQ(all[0].first, 0u);
  EXPECT_EQ(all[0].second->name, "a");
}

TEST(Checkpoint, ShardedIndex) {
  TempDir dir;
  write_u8_shard(dir / kShard2, {"layers.1.w", "lm_head"});
  write_u8_shard(dir / kShard1, {"embed", "layers.0.w"});
  write_u8_shard(dir / "model.safetensors", {"stale"});  // ignored when an index exists
  spit(dir / "model.safetensors.index.json", index_json({{"lm_head", kShard2},
                                                         {"embed", kShard1},
                                                         {"layers.0.w", kShard1},
                                                         {"layers.1.w", kShard2}}));
  auto c = Checkpoint::open(dir.path());
  EXPECT_TRUE(c.sharded());
  EXPECT_EQ(c.index_path(), dir / "model.safetensors.index.json");
  EXPECT_EQ(c.shard_names(), (std::vector<std::string>{kShard1, kShard2}));
  ASSERT_EQ(c.num_shards(), 2u);
  EXPECT_EQ(c.shard(0).path(), dir / kShard1);
  auto all = c.all_tensors();
  ASSERT_EQ(all.size(), 4u);
  EXPECT_EQ(all[0].first, 0u);
  EXPECT_EQ(all[0].second->name, "embed");
  EXPECT_EQ(all[1].second->name, "layers.0.w");
  EXPECT_EQ(all[2].first, 1u);
  EXPECT_EQ(all[2].second->name, "layers.1.w");
  EXPECT_EQ(all[3].second->name, "lm_head");
}

void expect_checkpoint_rejected(const TempDir& dir, std::initializer_list<std::string> want) {
  const std::string msg = format_error([&] { Checkpoint::open(dir.path()); });
  for (const auto& w : want) EXPECT_THAT(msg, HasSubstr(w));
}

// A FIFO, a symlink loop or a device where a checkpoint file should be is refused by kind before
// it is opened (a FIFO would block the open), for the single file, the index and a shard.
TEST(Checkpoint, NonRegularFilesAreRefusedBeforeOpening) {
  for (const char* name : {"model.safetensors", "model.safetensors.index.json"}) {
    TempDir dir;
    const auto p = dir / name;
    ASSERT_EQ(::mkfifo(p.c_str(), 0644), 0);
    expect_checkpoint_rejected(dir, {p.string() + ": ", "is a FIFO"});
    fs::remove(p);
    fs::create_symlink(name, p);
    expect_checkpoint_rejected(dir, {p.string() + ": ", "is a symbolic link loop"});
    fs::remove(p);
    fs::create_symlink("/dev/zero", p);
    expect_checkpoint_rejected(dir, {p.string() + ": ", "is a character device"});
  }
  TempDir dir;
  ASSERT_EQ(::mkfifo((dir / kShard2).c_str(), 0644), 0);
  write_u8_shard(dir / kShard1, {"a"});
  spit(dir / "model.safetensors.index.json", index_json({{"a", kShard1}, {"b", kShard2}}));
  expect_checkpoint_rejected(dir, {(dir / kShard2).string() + ": ", "is a FIFO"});
  // SafetensorsFile::open on its own refuses a FIFO the same way.
  EXPECT_THAT(format_error([&] { SafetensorsFile::open(dir / kShard2); }), HasSubstr("is a FIFO"));
}

TEST(Checkpoint, MissingShard) {
  TempDir dir;
  write_u8_shard(dir / kShard1, {"a"});
  spit(dir / "model.safetensors.index.json", index_json({{"a", kShard1}, {"b", kShard2}}));
  expect_checkpoint_rejected(
      dir, {(dir / "model.safetensors.index.json").string() + ": ", kShard2, "missing"});
}

TEST(Checkpoint, TensorInTwoShards) {
  TempDir dir;
  write_u8_shard(dir / kShard1, {"a", "dup"});
  write_u8_shard(dir / kShard2, {"b", "dup"});
  spit(dir / "model.safetensors.index.json",
       index_json({{"a", kShard1}, {"b", kShard2}, {"dup", kShard1}}));
  expect_checkpoint_rejected(dir, {(dir / "model.safetensors.index.json").string() + ": ",
                                   "tensor 'dup'", "two shards", kShard1, kShard2});
}

TEST(Checkpoint, BadShardNames) {
  for (const std::string bad : {"../model.safetensors", "..", "sub/model.safetensors",
                                "sub\\\\model.safetensors", "", "/etc/passwd"}) {
    TempDir dir;
    write_u8_shard(dir / "model.safetensors", {"a"});
    spit(dir / "model.safetensors.index.json", index_json({{"a", bad}}));
    expect_checkpoint_rejected(dir, {(dir / "model.safetensors.index.json").string() + ": ",
                                     "tensor 'a'", "invalid shard name"});
  }
}

TEST(Checkpoint, TensorListedButAbsentFromItsShard) {
  TempDir dir;
  write_u8_shard(dir / kShard1, {"a"});
  write_u8_shard(dir / kShard2, {"b"});
  spit(dir / "model.safetensors.index.json",
       index_json({{"a", kShard1}, {"b", kShard2}, {"ghost", kShard2}}));
  expect_checkpoint_rejected(
      dir, {"model.safetensors.index.json: ", "tensor 'ghost'", "absent", kShard2});
}

TEST(Checkpoint, TensorMappedToTheWrongShard) {
  TempDir dir;
  write_u8_shard(dir / kShard1, {"a"});
  write_u8_shard(dir / kShard2, {"b"});
  spit(dir / "model.safetensors.index.json", index_json({{"a", kShard2}, {"b", kShard2}}));
  expect_checkpoint_rejected(dir, {"tensor 'a'", "absent"});
}

TEST(Checkpoint, ShardOnDiskButNotInTheIndex) {
  // The index lists two shards, a third one lies beside them: its tensors would vanish.
  TempDir dir;
  write_u8_shard(dir / "model-00001-of-00003.safetensors", {"a"});
  write_u8_shard(dir / "model-00002-of-00003.safetensors", {"b"});
  write_u8_shard(dir / "model-00003-of-00003.safetensors", {"layers.3.w"});
  spit(dir / "model.safetensors.index.json",
       index_json(
           {{"a", "model-00001-of-00003.safetensors"}, {"b", "model-00002-of-00003.safetensors"}}));
  expect_checkpoint_rejected(
      dir,
      {"model.safetensors.index.json: ", "model-00003-of-00003.safetensors", "not in weight_map"});
}

TEST(Checkpoint, ShardFilesWithoutAnIndex) {
  TempDir dir;
  write_u8_shard(dir / kShard1, {"a"});
  write_u8_shard(dir / kShard2, {"b"});
  expect_checkpoint_rejected(dir, {kShard1, "without model.safetensors.index.json"});
  write_u8_shard(dir / "model.safetensors", {"a", "b"});  // still ambiguous
  expect_checkpoint_rejected(dir, {kShard1, "without model.safetensors.index.json"});
}

TEST(Checkpoint, UnrelatedSafetensorsFilesAreIgnored) {
  // Mistral's repos carry consolidated.safetensors (the reference implementation's format)
  // beside the transformers checkpoint.
  TempDir dir;
  write_u8_shard(dir / kShard1, {"a"});
  write_u8_shard(dir / kShard2, {"b"});
  write_u8_shard(dir / "consolidated.safetensors", {"tok_embeddings.weight"});
  write_u8_shard(dir / "adapter-of-x.safetensors", {"z"});
  spit(dir / "model.safetensors.index.json", index_json({{"a", kShard1}, {"b", kShard2}}));
  EXPECT_EQ(Checkpoint::open(dir.path()).all_tensors().size(), 2u);
  TempDir single;
  write_u8_shard(single / "model.safetensors", {"a"});
  write_u8_shard(single / "consolidated.safetensors", {"tok_embeddings.weight"});
  EXPECT_EQ(Checkpoint::open(single.path()).all_tensors().size(), 1u);
}

// A shard still downloading is planned from its header block: its tensors, offsets and file
// size are known, its data is not readable, and load() opens the file once it is there.
TEST(Checkpoint, APendingShardIsKnownFromItsHeaderAndLoadedLater) {
  TempDir dir, away;
  std::vector<OwnedTensor> ts = {{{"b", DType::F16, {2, 3}}, std::vector<std::byte>(12)},
                                 {{"c", DType::U8, {5}}, std::vector<std::byte>(5)}};
  for (size_t i = 0; i < ts[0].data.size(); ++i) ts[0].data[i] = static_cast<std::byte>(i + 1);
  write_safetensors(away / kShard2, ts, {{"format", "pt"}});
  write_u8_shard(dir / kShard1, {"a"});
  spit(dir / "model.safetensors.index.json",
       index_json({{"a", kShard1}, {"b", kShard2}, {"c", kShard2}}));
  const std::string head = safetensors_header_block(away / kShard2);
  auto c = Checkpoint::open(dir.path(), {{kShard2, head}});
  ASSERT_EQ(c.num_shards(), 2u);
  EXPECT_FALSE(c.pending(0));
  ASSERT_TRUE(c.pending(1));
  const SafetensorsFile& p = c.shard(1);
  EXPECT_EQ(p.path(), dir / kShard2);
  EXPECT_EQ(p.file_size(), fs::file_size(away / kShard2));
  EXPECT_EQ(p.header_bytes(), head);
  EXPECT_EQ(p.metadata().at("format"), "pt");
  ASSERT_EQ(p.tensors().size(), 2u);
  const TensorInfo* b = p.find("b");
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(b->shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(b->nbytes(), 12u);
  EXPECT_THROW(p.bytes(*b), std::logic_error);
  EXPECT_THROW(p.read_f32(*b), std::logic_error);
  EXPECT_EQ(c.all_tensors().size(), 3u);
  EXPECT_THAT(format_error([&] { c.load(1); }), HasSubstr("still not there"));
  EXPECT_TRUE(c.pending(1));
  fs::rename(away / kShard2, dir / kShard2);
  c.load(1);
  EXPECT_FALSE(c.pending(1));
  EXPECT_EQ(b->name, "b");  // the planned entries stay valid
  const auto got = c.shard(1).bytes(*c.shard(1).find("b"));
  EXPECT_EQ(std::vector<std::byte>(got.begin(), got.end()), ts[0].data);
}

// A shard that arrives with another header than the one planned from is refused, naming it;
// so is a shard already there that does not match its pending header.
TEST(Checkpoint, AShardWhoseHeaderChangedIsRefused) {
  TempDir dir, other;
  write_u8_shard(dir / kShard1, {"a"});
  spit(dir / "model.safetensors.index.json", index_json({{"a", kShard1}, {"b", kShard2}}));
  write_u8_shard(other / kShard2, {"b"});
  std::string head = safetensors_header_block(other / kShard2);
  auto c = Checkpoint::open(dir.path(), {{kShard2, head}});
  // The same tensor, now with metadata: a different header block.
  write_safetensors(dir / kShard2, {{{"b", DType::U8, {1}}, as_bytes("x")}}, {{"k", "v"}});
  EXPECT_THAT(format_error([&] { c.load(1); }),
              AllOf(HasSubstr((dir / kShard2).string()), HasSubstr("not the one fetched ahead")));
  EXPECT_THAT(format_error([&] {
                Checkpoint::open(dir.path(), {{kShard2, head}});
              }),
              HasSubstr("not the one fetched ahead"));
  EXPECT_NO_THROW(
      Checkpoint::open(dir.path(), {{kShard2, safetensors_header_block(dir / kShard2)}}));
  // A missing shard without a header is still missing.
  fs::remove(dir / kShard2);
  expect_checkpoint_rejected(dir, {kShard2, "missing"});
}

// A header block is held to the file rules: exactly 8 + N bytes, entries without holes or
// overlaps.
TEST(Checkpoint, AHeaderBlockIsValidatedLikeAFile) {
  const fs::path p = "/nonexistent/x.safetensors";
  const std::string ok = raw_file(R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}})", "");
  EXPECT_EQ(SafetensorsFile::from_header(p, ok)->file_size(), ok.size() + 2);
  EXPECT_THAT(format_error([&] { SafetensorsFile::from_header(p, ok + "xx"); }),
              HasSubstr("its length field says"));
  EXPECT_THAT(format_error([&] { SafetensorsFile::from_header(p, ok.substr(0, 20)); }),
              HasSubstr("past the end"));
  EXPECT_THAT(format_error([&] { SafetensorsFile::from_header(p, "abc"); }),
              HasSubstr("too short"));
  const std::string hole = raw_file(R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},)"
                                    R"("b":{"dtype":"U8","shape":[2],"data_offsets":[4,6]}})",
                                    "");
  EXPECT_THAT(format_error([&] { SafetensorsFile::from_header(p, hole); }),
              AllOf(HasSubstr(p.string()), HasSubstr("hole")));
}

TEST(Checkpoint, ShardTensorNotInWeightMap) {
  TempDir dir;
  write_u8_shard(dir / kShard1, {"a", "extra"});
  spit(dir / "model.safetensors.index.json", index_json({{"a", kShard1}}));
  expect_checkpoint_rejected(
      dir, {"model.safetensors.index.json: ", "tensor 'extra'", "not in weight_map"});
}

TEST(Checkpoint, MalformedIndex) {
  TempDir dir;
  write_u8_shard(dir / kShard1, {"a"});
  const auto idx = dir / "model.safetensors.index.json";
  spit(idx, "{\"weight_map\": ");
  expect_checkpoint_rejected(dir, {idx.string() + ": ", "not valid JSON"});
  spit(idx, R"({"metadata":{}})");
  expect_checkpoint_rejected(dir, {idx.string() + ": ", "weight_map"});
  spit(idx, R"({"weight_map":["a"]})");
  expect_checkpoint_rejected(dir, {idx.string() + ": ", "weight_map"});
  spit(idx, R"({"weight_map":{"a":1}})");
  expect_checkpoint_rejected(dir, {idx.string() + ": ", "tensor 'a'", "not a string"});
  spit(idx, R"([1])");
  expect_checkpoint_rejected(dir, {idx.string() + ": ", "not a JSON object"});
  spit(idx, std::string(R"({"weight_map":{"a":"x.safetensors","a":")") + kShard1 + "\"}}");
  expect_checkpoint_rejected(dir, {idx.string() + ": ", "duplicate"});
}

TEST(Checkpoint, BadShardFileNamesTheShard) {
  TempDir dir;
  spit(dir / kShard1, raw_file(kOk, zeros(3)));
  spit(dir / "model.safetensors.index.json", index_json({{"t", kShard1}}));
  expect_checkpoint_rejected(dir, {(dir / kShard1).string() + ": ", "truncated"});
}

TEST(Checkpoint, NoModelFile) {
  TempDir dir;
  spit(dir / "config.json", "{}");
  expect_checkpoint_rejected(
      dir, {dir.path().string() + ": no model.safetensors or model.safetensors.index.json"});
}

}  // namespace
}  // namespace loftqd::model
