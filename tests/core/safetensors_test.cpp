// The safetensors format (core/checkpoint/safetensors.h): round trips,
// deterministic bytes, every validation error as a one-line UsageError naming
// the file (and tensor), the checksum, and agreement with an independent
// Python reader (tests/core/safetensors_reader.py).
#include "core/checkpoint/safetensors.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "core/error.h"

namespace {

namespace fs = std::filesystem;
using dsk::core::NamedTensors;
using dsk::core::SafetensorsFile;
using dsk::core::tensor_checksum;
using dsk::core::write_safetensors;

class StTempDir {
 public:
  StTempDir() {
    std::string tmpl = (fs::temp_directory_path() / "dsk_safetensors_XXXXXX").string();
    if (::mkdtemp(tmpl.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
    path_ = tmpl;
  }
  ~StTempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  std::string file(const std::string& name) const { return (path_ / name).string(); }

 private:
  fs::path path_;
};

std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

void spit(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

std::string le64(uint64_t n) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[i] = static_cast<char>(n >> (8 * i));
  return s;
}

// A file built by hand from a header text and data bytes.
std::string raw_file(const std::string& header, const std::string& data) {
  return le64(header.size()) + header + data;
}

NamedTensors sample() {
  NamedTensors t;
  t.push_back({"w.f32", at::arange(12, at::kFloat).reshape({3, 4}) / 7});
  t.push_back({"a.f64", at::tensor({0.1, -2.5, 1e300}, at::kDouble)});
  t.push_back({"i64", at::tensor({int64_t{-1}, int64_t{2}, int64_t{40000000000}}, at::kLong)});
  t.push_back({"i32", at::arange(-3, 3, at::kInt).reshape({2, 1, 3})});
  t.push_back({"u8", at::tensor({0, 7, 255}, at::kByte)});
  t.push_back({"bf16", at::tensor({1.5f, -0.25f}, at::kFloat).to(at::kBFloat16)});
  t.push_back({"f16", at::tensor({3.0f, 65504.0f}, at::kFloat).to(at::kHalf)});
  t.push_back({"flag", at::tensor({1, 0, 1}, at::kInt).to(at::kBool)});
  t.push_back({"empty", at::zeros({0, 5}, at::kFloat)});
  t.push_back({"scalar", at::scalar_tensor(42.0, at::kDouble)});
  // A non-contiguous view and a parameter with requires_grad.
  t.push_back({"view", at::arange(20, at::kFloat).reshape({4, 5}).t()});
  t.push_back({"param", at::ones({2, 2}, at::kFloat).requires_grad_(true)});
  return t;
}

// Runs `f`, expects a UsageError whose message holds every string of `parts`
// and is one line.
template <class F>
void expect_usage_error(F f, const std::vector<std::string>& parts) {
  try {
    f();
    ADD_FAILURE() << "no UsageError";
  } catch (const dsk::UsageError& e) {
    std::string msg = e.what();
    EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
    for (const auto& p : parts) EXPECT_NE(msg.find(p), std::string::npos) << "'" << p << "' not in: " << msg;
  }
}

TEST(Safetensors, RoundTripsDtypesAndShapes) {
  StTempDir dir;
  std::string path = dir.file("rt.safetensors");
  NamedTensors in = sample();
  write_safetensors(path, in);
  SafetensorsFile f(path);
  ASSERT_EQ(f.tensors().size(), in.size());
  EXPECT_EQ(f.file_size(), fs::file_size(path));
  EXPECT_EQ(f.data_start() % 8, 0u);
  for (const auto& nt : in) {
    SCOPED_TRACE(nt.name);
    ASSERT_TRUE(f.contains(nt.name));
    at::Tensor got = f.read(nt.name);
    EXPECT_EQ(got.scalar_type(), nt.tensor.scalar_type());
    EXPECT_EQ(got.sizes(), nt.tensor.sizes());
    EXPECT_TRUE(got.is_contiguous());
    EXPECT_FALSE(got.requires_grad());
    EXPECT_TRUE(at::equal(got, nt.tensor.detach()));
  }
  EXPECT_EQ(f.info("scalar").shape, std::vector<int64_t>{});
  EXPECT_EQ(f.info("scalar").dtype, "F64");
  EXPECT_EQ(f.info("empty").begin, f.info("empty").end);
  EXPECT_EQ(f.info("bf16").dtype, "BF16");
  EXPECT_FALSE(f.contains("nope"));
  EXPECT_TRUE(f.metadata().empty());
  // Data order is name order.
  for (size_t i = 1; i < f.tensors().size(); ++i)
    EXPECT_LT(f.tensors()[i - 1].name, f.tensors()[i].name);
}

TEST(Safetensors, SameInputGivesIdenticalBytes) {
  StTempDir dir;
  NamedTensors in = sample();
  NamedTensors reversed(in.rbegin(), in.rend());
  std::map<std::string, std::string> meta{{"step", "7"}, {"format", "dsk"}};
  write_safetensors(dir.file("a"), in, meta);
  write_safetensors(dir.file("b"), reversed, meta);
  EXPECT_EQ(slurp(dir.file("a")), slurp(dir.file("b")));
}

TEST(Safetensors, ExactBytesOfATinyFile) {
  StTempDir dir;
  write_safetensors(dir.file("t"), {{"x", at::tensor({1.0f}, at::kFloat)}}, {{"k", "v"}});
  std::string header = R"({"__metadata__":{"k":"v"},"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})";
  header.append((8 - header.size() % 8) % 8, ' ');
  const char one[4] = {0x00, 0x00, static_cast<char>(0x80), 0x3f};
  EXPECT_EQ(slurp(dir.file("t")), raw_file(header, std::string(one, 4)));
}

TEST(Safetensors, MetadataRoundTrips) {
  StTempDir dir;
  std::map<std::string, std::string> meta{{"step", "120"}, {"note", "ünïcode \"quoted\"\n"}, {"", "empty key"}};
  write_safetensors(dir.file("m"), {{"t", at::ones({2})}}, meta);
  SafetensorsFile f(dir.file("m"));
  EXPECT_EQ(f.metadata(), meta);
}

TEST(Safetensors, ReadsHandMadeFilesInAnyOrder) {
  // Written by another tool: "b" first in the data, padding, no metadata.
  StTempDir dir;
  std::string header =
      R"({"a":{"dtype":"I32","shape":[2],"data_offsets":[8,16]},"b":{"shape":[1],"dtype":"F64","data_offsets":[0,8]}})";
  header += "      ";
  double b = 0.5;
  int32_t a[2] = {-7, 9};
  std::string data(reinterpret_cast<const char*>(&b), 8);
  data.append(reinterpret_cast<const char*>(a), 8);
  spit(dir.file("h"), raw_file(header, data));
  SafetensorsFile f(dir.file("h"));
  ASSERT_EQ(f.tensors().size(), 2u);
  EXPECT_EQ(f.tensors()[0].name, "b");
  EXPECT_TRUE(at::equal(f.read("a"), at::tensor({-7, 9}, at::kInt)));
  EXPECT_EQ(f.read("b").item<double>(), 0.5);
  // No tensors at all is a valid file too.
  spit(dir.file("none"), raw_file("{}      ", ""));
  EXPECT_TRUE(SafetensorsFile(dir.file("none")).tensors().empty());
}

TEST(Safetensors, WriterRejectsBadNames) {
  StTempDir dir;
  EXPECT_THROW(write_safetensors(dir.file("d"), {{"x", at::ones({1})}, {"x", at::ones({2})}}),
               std::invalid_argument);
  EXPECT_THROW(write_safetensors(dir.file("d"), {{"__metadata__", at::ones({1})}}), std::invalid_argument);
  EXPECT_THROW(write_safetensors(dir.file("d"), {{"", at::ones({1})}}), std::invalid_argument);
}

TEST(Safetensors, WriterReportsIoErrors) {
  try {
    write_safetensors("/nonexistent-dir/x.safetensors", {{"x", at::ones({1})}});
    ADD_FAILURE() << "no error";
  } catch (const std::runtime_error& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find("/nonexistent-dir/x.safetensors"), std::string::npos) << msg;
    EXPECT_NE(msg.find(std::strerror(ENOENT)), std::string::npos) << msg;
  }
}

class SafetensorsBad : public ::testing::Test {
 protected:
  void SetUp() override {
    path_ = dir_.file("shard-00001.safetensors");
    write_safetensors(path_, {{"alpha", at::arange(6, at::kFloat)},
                              {"experts.3.fc0.weight", at::ones({4, 8}, at::kFloat)}});
    bytes_ = slurp(path_);
  }
  void open_expecting(const std::vector<std::string>& parts) {
    std::vector<std::string> all = parts;
    all.push_back(path_);
    all.push_back("checkpoint: ");
    expect_usage_error([&] { SafetensorsFile f(path_); }, all);
  }
  StTempDir dir_;
  std::string path_;
  std::string bytes_;
};

TEST_F(SafetensorsBad, ShorterThanEightBytes) {
  spit(path_, bytes_.substr(0, 5));
  open_expecting({"5 bytes"});
  spit(path_, "");
  open_expecting({"0 bytes"});
}

TEST_F(SafetensorsBad, MissingFile) {
  fs::remove(path_);
  open_expecting({"cannot open"});
}

TEST_F(SafetensorsBad, HeaderLengthTooBig) {
  spit(path_, le64(bytes_.size()) + bytes_.substr(8));
  open_expecting({"header length"});
  spit(path_, le64(~uint64_t{0}) + bytes_.substr(8));
  open_expecting({"header length"});
}

TEST_F(SafetensorsBad, Truncated) {
  spit(path_, bytes_.substr(0, bytes_.size() - 4));
  open_expecting({"tensor 'experts.3.fc0.weight'", "data ends at byte 152 but the file holds 148"});
  // Cut inside the header.
  spit(path_, bytes_.substr(0, 40));
  open_expecting({"header length"});
}

TEST_F(SafetensorsBad, TrailingBytes) {
  spit(path_, bytes_ + "xxxx");
  open_expecting({"4 bytes after the end", "experts.3.fc0.weight"});
}

TEST_F(SafetensorsBad, GarbledJson) {
  std::string b = bytes_;
  size_t at = b.find("\"shape\"");
  b[at] = '?';
  spit(path_, b);
  open_expecting({"not valid JSON"});
  b = bytes_;
  b[8] = '[';
  spit(path_, b);
  open_expecting({"does not begin with '{'"});
}

TEST_F(SafetensorsBad, UnknownDtype) {
  std::string b = bytes_;
  size_t at = b.rfind("\"F32\"");  // the last entry's dtype: experts.3.fc0.weight
  b.replace(at, 5, "\"F33\"");
  spit(path_, b);
  open_expecting({"tensor 'experts.3.fc0.weight'", "unknown dtype 'F33'"});
}

TEST_F(SafetensorsBad, OffsetsInconsistentWithShape) {
  std::string b = bytes_;
  size_t at = b.find("[6]");
  b.replace(at, 3, "[5]");
  spit(path_, b);
  open_expecting({"tensor 'alpha'", "span 24 bytes", "needs 20"});
}

std::string hand_path(const StTempDir& d) { return d.file("hand.safetensors"); }

TEST(SafetensorsBadHeader, EachFieldChecked) {
  StTempDir dir;
  const std::string path = hand_path(dir);
  struct Case {
    std::string header;
    std::string data;
    std::vector<std::string> parts;
  };
  const std::string d8(8, '\0');
  const std::vector<Case> cases = {
      {R"({"a":{"dtype":"F32","shape":[1]}})", "", {"tensor 'a'", "missing key 'data_offsets'"}},
      {R"({"a":{"shape":[1],"data_offsets":[0,4]}})", d8.substr(0, 4), {"tensor 'a'", "missing key 'dtype'"}},
      {R"({"a":{"dtype":"F32","data_offsets":[0,4]}})", d8.substr(0, 4), {"tensor 'a'", "missing key 'shape'"}},
      {R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"x":1}})", d8.substr(0, 4), {"tensor 'a'", "unknown key 'x'"}},
      {R"({"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", d8.substr(0, 4), {"tensor 'a'", "shape"}},
      {R"({"a":{"dtype":"F32","shape":[1.5],"data_offsets":[0,4]}})", d8.substr(0, 4), {"tensor 'a'", "shape"}},
      {R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0]}})", d8.substr(0, 4), {"tensor 'a'", "data_offsets"}},
      {R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,0]}})", d8.substr(0, 4), {"tensor 'a'", "end before"}},
      {R"({"a":{"dtype":7,"shape":[1],"data_offsets":[0,4]}})", d8.substr(0, 4), {"tensor 'a'", "'dtype' is not a string"}},
      {R"({"a":[1,2]})", "", {"tensor 'a'", "not an object"}},
      {R"({"a":{"dtype":"F32","shape":[4294967296,4294967296,4294967296],"data_offsets":[0,4]}})", d8.substr(0, 4),
       {"tensor 'a'", "overflows"}},
      // Overlap: b starts inside a.
      {R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
       d8, {"tensor 'b'", "overlap tensor 'a'"}},
      // Both at the same place.
      {R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})",
       d8 + d8, {"overlap"}},
      // Gap between a and b.
      {R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})",
       d8 + d8.substr(0, 4), {"tensor 'b'", "gap after byte 4"}},
      // Gap at the start.
      {R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", d8, {"tensor 'a'", "gap after byte 0"}},
      {R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})",
       d8.substr(0, 4), {"tensor 'a'", "twice"}},
      {R"({"__metadata__":{"k":1}})", "", {"__metadata__", "'k'"}},
      {R"({"__metadata__":[]})", "", {"__metadata__"}},
      {"{\"a\\n\":{\"dtype\":\"F33\",\"shape\":[1],\"data_offsets\":[0,4]}}", d8.substr(0, 4), {"tensor 'a ", "F33"}},
      {"{\"a\":1", "", {"not valid JSON"}},
      {"{\"\xff\":1}", "", {"not valid JSON"}},
      {"{", "", {"too short"}},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.header);
    spit(path, raw_file(c.header, c.data));
    std::vector<std::string> parts = c.parts;
    parts.push_back(path);
    expect_usage_error([&] { SafetensorsFile f(path); }, parts);
  }
}

TEST(Safetensors, ReadOfUnknownNameOrUnsupportedDtype) {
  StTempDir dir;
  std::string path = dir.file("r.safetensors");
  write_safetensors(path, {{"x", at::ones({1})}});
  SafetensorsFile f(path);
  expect_usage_error([&] { f.read("experts.9.fc0.weight"); }, {path, "tensor 'experts.9.fc0.weight'", "no such tensor"});
  spit(path, raw_file(R"({"u":{"dtype":"U16","shape":[2],"data_offsets":[0,4]}})", std::string(4, '\0')));
  SafetensorsFile g(path);
  EXPECT_EQ(g.info("u").dtype, "U16");
  expect_usage_error([&] { g.read("u"); }, {path, "tensor 'u'", "U16"});
}

TEST(Safetensors, ReadAfterTheFileShrank) {
  StTempDir dir;
  std::string path = dir.file("s.safetensors");
  write_safetensors(path, {{"x", at::ones({64})}});
  SafetensorsFile f(path);
  ASSERT_EQ(::truncate(path.c_str(), static_cast<off_t>(f.file_size() - 16)), 0);
  expect_usage_error([&] { f.read("x"); }, {path, "tensor 'x'", "file ends"});
}

TEST(SafetensorsChecksum, IsXxh64OfTheBytes) {
  // Reference vectors of XXH64, seed 0.
  EXPECT_EQ(dsk::core::xxh64("", 0), 0xEF46DB3751D8E999ull);
  EXPECT_EQ(dsk::core::xxh64("a", 1), 0xD24EC4F1A98C6E5Bull);
  EXPECT_EQ(dsk::core::xxh64("abc", 3), 0x44BC2CF5AD770999ull);
  const char* text = "Nobody inspects the spammish repetition";
  EXPECT_EQ(dsk::core::xxh64(text, std::strlen(text)), 0xFBCEA83C8A378BF1ull);
  at::Tensor abc = at::tensor({'a', 'b', 'c'}, at::kByte);
  EXPECT_EQ(tensor_checksum(abc), 0x44BC2CF5AD770999ull);
  EXPECT_EQ(tensor_checksum(at::zeros({0}, at::kFloat)), 0xEF46DB3751D8E999ull);
}

TEST(SafetensorsChecksum, ChangesWithOneByteAndIgnoresLayout) {
  at::Tensor t = at::randn({37, 11}, at::kFloat);
  const uint64_t base = tensor_checksum(t);
  EXPECT_EQ(tensor_checksum(t.clone()), base);
  EXPECT_EQ(tensor_checksum(t.t().contiguous().t()), base);  // non-contiguous, same values
  for (size_t i : {size_t{0}, size_t{5}, size_t{37 * 11 * 4 - 1}, size_t{200}}) {
    at::Tensor u = t.clone();
    static_cast<unsigned char*>(u.data_ptr())[i] ^= 1;
    EXPECT_NE(tensor_checksum(u), base) << "byte " << i;
  }
  // And the checksum of what was read back equals that of what was written.
  StTempDir dir;
  write_safetensors(dir.file("c"), {{"t", t}});
  EXPECT_EQ(tensor_checksum(SafetensorsFile(dir.file("c")).read("t")), base);
}

// An independent reader (tests/core/safetensors_reader.py, stdlib Python,
// written from the format description) must parse our file and see the
// values we wrote.
TEST(SafetensorsPython, IndependentReaderAgrees) {
  if (std::system("python3 -c 'import json, struct' >/dev/null 2>&1") != 0)
    GTEST_SKIP() << "python3 is not installed";
  StTempDir dir;
  const std::string file = dir.file("known.safetensors");
  const std::string expected = dir.file("expected.json");
  write_safetensors(file,
                    {{"a", at::arange(6, at::kFloat).reshape({2, 3})},
                     {"b", at::tensor({int64_t{-1}, int64_t{2}, int64_t{3}, int64_t{40000000000}}, at::kLong)},
                     {"c", at::scalar_tensor(0.1, at::kDouble)},
                     {"d", at::tensor({0.1f, -3.5f}, at::kFloat)},
                     {"e", at::zeros({3, 0}, at::kDouble)},
                     {"f", at::tensor({-5, 6}, at::kInt)},
                     {"g", at::tensor({1.5f, -2.0f}, at::kFloat).to(at::kBFloat16)}},
                    {{"step", "3"}});
  spit(expected, R"({
    "__metadata__": {"step": "3"},
    "a": {"dtype": "F32", "shape": [2, 3], "values": [0, 1, 2, 3, 4, 5]},
    "b": {"dtype": "I64", "shape": [4], "values": [-1, 2, 3, 40000000000]},
    "c": {"dtype": "F64", "shape": [], "values": [0.1]},
    "d": {"dtype": "F32", "shape": [2], "values": [0.1, -3.5]},
    "e": {"dtype": "F64", "shape": [3, 0], "values": []},
    "f": {"dtype": "I32", "shape": [2], "values": [-5, 6]},
    "g": {"dtype": "BF16", "shape": [2], "values": [1.5, -2.0]}
  })");
  const std::string reader = std::string(DSK_SOURCE_DIR) + "/tests/core/safetensors_reader.py";
  const std::string cmd = "python3 '" + reader + "' '" + file + "' '" + expected + "'";
  EXPECT_EQ(std::system(cmd.c_str()), 0) << cmd;

  // The reader is not a rubber stamp: it rejects a value that differs...
  spit(expected, R"({"__metadata__": {"step": "3"},
    "a": {"dtype": "F32", "shape": [2, 3], "values": [0, 1, 2, 3, 4, 6]},
    "b": {"dtype": "I64", "shape": [4]}, "c": {"dtype": "F64", "shape": []},
    "d": {"dtype": "F32", "shape": [2]}, "e": {"dtype": "F64", "shape": [3, 0]},
    "f": {"dtype": "I32", "shape": [2]}, "g": {"dtype": "BF16", "shape": [2]}})");
  EXPECT_NE(std::system((cmd + " >/dev/null").c_str()), 0);
  // ...and a truncated file.
  std::string bytes = slurp(file);
  spit(file, bytes.substr(0, bytes.size() - 1));
  EXPECT_NE(std::system(("python3 '" + reader + "' '" + file + "' >/dev/null").c_str()), 0);
}

}  // namespace
