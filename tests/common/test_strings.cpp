#include "common/strings.h"

#include <gtest/gtest.h>

#include <set>

namespace loftqd::common {
namespace {

TEST(Strings, SplitJoinTrim) {
  EXPECT_EQ(split("a/b//c", '/'), (std::vector<std::string>{"a", "b", "", "c"}));
  EXPECT_EQ(split("", '/'), (std::vector<std::string>{""}));
  EXPECT_EQ(join({"a", "b", "c"}, "/"), "a/b/c");
  EXPECT_EQ(join({"a", "b", "c"}, "/", 1), "b/c");
  EXPECT_EQ(join({"a", "b", "c"}, ", ", 0, 2), "a, b");
  EXPECT_EQ(trim("  x y\t\n"), "x y");
  EXPECT_EQ(lower("NF4-Ab"), "nf4-ab");
}

TEST(Strings, UrlEscaping) {
  EXPECT_EQ(escape_segment("a b/c%"), "a%20b%2Fc%25");
  EXPECT_EQ(escape_path("dir/a b.txt"), "dir/a%20b.txt");
  EXPECT_EQ(escape_path("refs/pr/1"), "refs/pr/1");
  EXPECT_EQ(escape_segment("ü"), "%C3%BC");
}

TEST(Strings, RandomHexIsHexOfTheLengthAskedAndDiffers) {
  std::set<std::string> seen;
  for (size_t n : {1u, 7u, 12u, 32u}) {
    const std::string h = random_hex(n);
    EXPECT_EQ(h.size(), n);
    EXPECT_EQ(h.find_first_not_of("0123456789abcdef"), std::string::npos) << h;
  }
  for (int i = 0; i < 100; ++i) seen.insert(random_hex(32));
  EXPECT_EQ(seen.size(), 100u);
}

}  // namespace
}  // namespace loftqd::common
