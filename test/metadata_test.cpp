#include "traffic_control/metadata.hpp"

#include <gtest/gtest.h>

#include <string>
#include <utility>
#include <vector>

#include "traffic_control/sqlcommenter.hpp"

namespace tc {
namespace {

using Items = std::vector<std::pair<std::string, std::string>>;

TEST(Metadata, IsBuiltinKey) {
  for (std::string_view key : kBuiltinKeys) EXPECT_TRUE(IsBuiltinKey(key)) << key;
  EXPECT_FALSE(IsBuiltinKey("route"));
  EXPECT_FALSE(IsBuiltinKey("Username"));  // Keys are case-sensitive.
  EXPECT_FALSE(IsBuiltinKey("username "));
  EXPECT_FALSE(IsBuiltinKey(""));
}

TEST(Metadata, SetBuiltinReplaces) {
  Metadata metadata;
  metadata.SetBuiltin("username", "alice");
  metadata.SetBuiltin("database", "shop");
  metadata.SetBuiltin("username", "bob");
  EXPECT_EQ(metadata.items(), (Items{{"username", "bob"}, {"database", "shop"}}));
}

TEST(Metadata, TagCannotOverrideBuiltin) {
  Metadata metadata;
  metadata.SetBuiltin("username", "alice");
  metadata.AddTags({{"username", "postgres"}, {"route", "/api"}});
  ASSERT_NE(metadata.Find("username"), nullptr);
  EXPECT_EQ(*metadata.Find("username"), "alice");
  EXPECT_EQ(metadata.items(), (Items{{"username", "alice"}, {"route", "/api"}}));
}

TEST(Metadata, TagCannotSetBuiltinEvenWhenUnset) {
  Metadata metadata;
  metadata.AddTags({{"command", "select"}, {"query_id", "42"}, {"remote_address", "10.0.0.1"}});
  EXPECT_TRUE(metadata.items().empty());
  // The server may fill built-ins after the tags.
  metadata.SetBuiltin("command", "update");
  EXPECT_EQ(*metadata.Find("command"), "update");
}

TEST(Metadata, FirstTagWins) {
  Metadata metadata;
  metadata.AddTags({{"tier", "free"}, {"tier", "paid"}});
  metadata.AddTags({{"tier", "trial"}, {"app", "web"}});
  EXPECT_EQ(metadata.items(), (Items{{"tier", "free"}, {"app", "web"}}));
}

TEST(Metadata, FindAndClear) {
  Metadata metadata;
  EXPECT_EQ(metadata.Find("route"), nullptr);
  metadata.AddTags({{"route", "/checkout"}, {"empty", ""}});
  ASSERT_NE(metadata.Find("route"), nullptr);
  EXPECT_EQ(*metadata.Find("route"), "/checkout");
  ASSERT_NE(metadata.Find("empty"), nullptr);
  EXPECT_EQ(*metadata.Find("empty"), "");
  EXPECT_EQ(metadata.Find("Route"), nullptr);
  EXPECT_EQ(metadata.Find("rout"), nullptr);
  metadata.Clear();
  EXPECT_EQ(metadata.Find("route"), nullptr);
  EXPECT_TRUE(metadata.items().empty());
}

TEST(Metadata, FromParsedComment) {
  Metadata metadata;
  metadata.SetBuiltin("username", "app_user");
  metadata.AddTags(ParseSqlCommenterTags(
      "SELECT 1 /*username='postgres',route='%2Fapi%2Fexport',tier='free',route='x'*/;"));
  EXPECT_EQ(metadata.items(),
            (Items{{"username", "app_user"}, {"route", "/api/export"}, {"tier", "free"}}));
}

}  // namespace
}  // namespace tc
