// Loading the configuration through the C ABI, as the shim does at a
// backend's first statement and after a reload: the load is built on a
// helper thread (its own malloc arena), and what it finds must still reach
// the caller: the rule set, the rule problems and a failure's message.
#include <gtest/gtest.h>

#include <string>
#include <utility>
#include <vector>

#include "traffic_control/capi.h"

namespace {

std::vector<std::pair<std::string, std::string>> reported;

void Collect(const char* rule, const char* message) { reported.emplace_back(rule, message); }

TEST(CapiConfig, LoadReportsRuleProblemsAndReplacesTheRuleSet) {
  reported.clear();
  ASSERT_TRUE(tc_load_config(R"([{"name":"b","mode":"enforce","max_concurrent":1}])",
                             R"([{"name":"ok","budget":"b","match":{"route":"x"}},
                                 {"name":"lost","budget":"nope","match":{}}])",
                             Collect))
      << tc_last_error();
  EXPECT_FALSE(tc_config_empty());
  ASSERT_EQ(reported.size(), 1u);
  EXPECT_EQ(reported[0].first, "lost");
  EXPECT_NE(reported[0].second.find("\"nope\" does not exist"), std::string::npos);

  ASSERT_TRUE(tc_load_config("[]", "[]", Collect)) << tc_last_error();
  EXPECT_TRUE(tc_config_empty());
}

TEST(CapiConfig, AFailedLoadKeepsTheRuleSetAndSaysWhy) {
  ASSERT_TRUE(tc_load_config(R"([{"name":"b","mode":"enforce"}])", R"([{"budget":"b","match":{}}])",
                             nullptr))
      << tc_last_error();
  EXPECT_FALSE(tc_load_config(R"([{"name":"b","mode":"sometimes"}])", "[]", nullptr));
  EXPECT_NE(std::string(tc_last_error()).find("mode"), std::string::npos) << tc_last_error();
  EXPECT_FALSE(tc_config_empty());  // the previous rules stay
  EXPECT_FALSE(tc_load_config("[]", "not json", nullptr));
  EXPECT_NE(std::string(tc_last_error()).find("rules"), std::string::npos) << tc_last_error();
  ASSERT_TRUE(tc_load_config("[]", "[]", nullptr));
}

TEST(CapiConfig, NamesTheRolesTheRulesTestWithMemberOf) {
  ASSERT_TRUE(tc_load_config(R"([{"name":"b","mode":"enforce"}])",
                             R"([{"budget":"b","match":{"member_of":["analysts","staff"]}},
                                 {"budget":"b","match":{"member_of":{"not":"staff"}}}])",
                             nullptr))
      << tc_last_error();
  ASSERT_EQ(tc_config_member_of_role_count(), 2u);
  EXPECT_STREQ(tc_config_member_of_role(0), "analysts");
  EXPECT_STREQ(tc_config_member_of_role(1), "staff");
  EXPECT_EQ(tc_config_member_of_role(2), nullptr);
  // No rule tests member_of: the server asks the catalog nothing.
  ASSERT_TRUE(
      tc_load_config(R"([{"name":"b"}])", R"([{"budget":"b","match":{"username":"x"}}])", nullptr));
  EXPECT_EQ(tc_config_member_of_role_count(), 0u);
  ASSERT_TRUE(tc_load_config("[]", "[]", nullptr));
}

}  // namespace
