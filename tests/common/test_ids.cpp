#include "common/ids.h"

#include <gtest/gtest.h>

namespace loftqd::common {
namespace {

TEST(RepoId, OneRuleForEveryName) {
  EXPECT_EQ(repo_id_problem("meta-llama/Llama-2-7b-hf"), std::nullopt);
  EXPECT_EQ(repo_id_problem("gpt2"), std::nullopt);
  for (const char* bad : {"", "a/b/c", "../x", "a--b/c", "org-/name", "org/-name", "org/name.",
                          ".org/name", "org/na me", "org/", "/name"})
    EXPECT_NE(repo_id_problem(bad), std::nullopt) << bad;
  EXPECT_EQ(repo_id_problem("org-/name"), "name starts or ends with '.' or '-'");
}

TEST(RepoId, NamespacedNeedsAnOrganization) {
  EXPECT_EQ(namespaced_repo_id_problem("org/name"), std::nullopt);
  EXPECT_EQ(namespaced_repo_id_problem("gpt2"), "repo id has no organization (expected org/name)");
  EXPECT_NE(namespaced_repo_id_problem("org-/name"), std::nullopt);
}

TEST(RepoPath, UnsafePathsAreRefused) {
  EXPECT_EQ(path_problem("loftq_init/adapter_config.json"), std::nullopt);
  for (const char* bad :
       {"", "/etc/passwd", "a/../b", "./a", "a//b", ".git/config", "a\\b", "a/.GIT/x"})
    EXPECT_NE(path_problem(bad), std::nullopt) << bad;
  EXPECT_EQ(revision_problem("refs/pr/1"), std::nullopt);
  EXPECT_NE(revision_problem("main~1"), std::nullopt);
  EXPECT_TRUE(is_sha1_hex(std::string(40, 'a')));
  EXPECT_FALSE(is_sha1_hex(std::string(40, 'A')));
  EXPECT_TRUE(is_sha256_hex(std::string(64, '0')));
}

}  // namespace
}  // namespace loftqd::common
