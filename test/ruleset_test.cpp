#include "traffic_control/ruleset.hpp"

#include <gtest/gtest.h>

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <optional>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "traffic_control/admission.hpp"

namespace tc {
namespace {

Budget MakeBudget(std::string name, Mode mode = Mode::kEnforce) {
  Budget budget;
  budget.name = std::move(name);
  budget.mode = mode;
  return budget;
}

Rule MakeRule(std::string name, std::string budget, std::vector<Condition> match,
              std::optional<std::string> each = std::nullopt) {
  Rule rule;
  rule.name = std::move(name);
  rule.budget = std::move(budget);
  rule.match = std::move(match);
  rule.each = std::move(each);
  return rule;
}

// Built-in keys are set as the server would; everything else arrives as tags.
Metadata MakeMetadata(std::initializer_list<std::pair<std::string, std::string>> items) {
  Metadata metadata;
  std::vector<Tag> tags;
  for (const auto& [key, value] : items) {
    if (IsBuiltinKey(key)) {
      metadata.SetBuiltin(key, value);
    } else {
      tags.push_back({key, value});
    }
  }
  metadata.AddTags(tags);
  return metadata;
}

RuleSet MakeRuleSet(std::vector<Budget> budgets, std::vector<Rule> rules) {
  std::vector<RuleProblem> problems;
  RuleSet rule_set(std::move(budgets), std::move(rules), &problems);
  EXPECT_TRUE(problems.empty()) << problems.front().message;
  return rule_set;
}

// Matches as "budget[instance]:rule" strings, in output order.
std::vector<std::string> Matches(const RuleSet& rule_set, const Metadata& metadata) {
  std::vector<BudgetMatch> matches;
  rule_set.Match(metadata, &matches);
  std::vector<std::string> described;
  for (const BudgetMatch& match : matches) {
    std::string text = rule_set.budgets().at(match.budget_index).name;
    if (match.has_instance) text += "[" + match.instance + "]";
    text += ":" + rule_set.rules().at(match.rule_index).name;
    described.push_back(text);
    // Match and RuleMatches must agree.
    EXPECT_TRUE(rule_set.RuleMatches(match.rule_index, metadata)) << text;
  }
  return described;
}

using Strings = std::vector<std::string>;

Rule MakeDefaultRule(std::string name, std::string budget, std::vector<Condition> match = {},
                     std::optional<std::string> each = std::nullopt) {
  Rule rule = MakeRule(std::move(name), std::move(budget), std::move(match), std::move(each));
  rule.is_default = true;
  return rule;
}

Condition Not(std::string key, std::vector<std::string> values) {
  return Condition{std::move(key), std::move(values), MatchKind::kNoneOf};
}

Condition Prefix(std::string key, std::vector<std::string> prefixes) {
  return Condition{std::move(key), std::move(prefixes), MatchKind::kPrefix};
}

// The metadata the core builds from what the server passes: built-ins
// (member_of: the roles it found the current role a member of) and the
// statement's text, whose tags cannot set a built-in.
Metadata ServerMetadata(const std::vector<const char*>& member_of, std::string_view text = {},
                        std::optional<std::string_view> username = std::nullopt) {
  StatementInfo statement;
  statement.text = text;
  statement.username = username;
  statement.member_of = member_of.data();
  statement.member_of_count = member_of.size();
  Metadata metadata;
  BuildMetadata(statement, &metadata);
  return metadata;
}

TEST(RuleSet, DefaultIsEmptyAndMatchesNothing) {
  const RuleSet rule_set;
  EXPECT_TRUE(rule_set.empty());
  EXPECT_EQ(Matches(rule_set, MakeMetadata({{"route", "x"}})), Strings{});
  EXPECT_FALSE(rule_set.RuleMatches(0, MakeMetadata({})));
}

TEST(RuleSet, SingleKeyMatches) {
  const RuleSet rule_set =
      MakeRuleSet({MakeBudget("export")}, {MakeRule("r", "export", {{"route", {"/api/export"}}})});
  EXPECT_FALSE(rule_set.empty());
  EXPECT_EQ(Matches(rule_set, MakeMetadata({{"route", "/api/export"}})), Strings{"export:r"});
  EXPECT_EQ(Matches(rule_set, MakeMetadata({{"route", "/api/other"}})), Strings{});
  EXPECT_EQ(Matches(rule_set, MakeMetadata({{"app", "/api/export"}})), Strings{});
  EXPECT_EQ(Matches(rule_set, MakeMetadata({})), Strings{});
}

TEST(RuleSet, KeysAreCaseSensitiveAndValuesExact) {
  const RuleSet rule_set = MakeRuleSet({MakeBudget("b")}, {MakeRule("r", "b", {{"app", {"web"}}})});
  EXPECT_EQ(Matches(rule_set, MakeMetadata({{"app", "web"}})), Strings{"b:r"});
  EXPECT_EQ(Matches(rule_set, MakeMetadata({{"App", "web"}})), Strings{});
  EXPECT_EQ(Matches(rule_set, MakeMetadata({{"app", "Web"}})), Strings{});
  EXPECT_EQ(Matches(rule_set, MakeMetadata({{"app", "web "}})), Strings{});
  EXPECT_EQ(Matches(rule_set, MakeMetadata({{"app", std::string("web\0x", 5)}})), Strings{});
}

TEST(RuleSet, ValueListIsAnyOf) {
  const RuleSet rule_set =
      MakeRuleSet({MakeBudget("b")}, {MakeRule("r", "b", {{"tier", {"free", "trial"}}})});
  EXPECT_EQ(Matches(rule_set, MakeMetadata({{"tier", "free"}})), Strings{"b:r"});
  EXPECT_EQ(Matches(rule_set, MakeMetadata({{"tier", "trial"}})), Strings{"b:r"});
  EXPECT_EQ(Matches(rule_set, MakeMetadata({{"tier", "paid"}})), Strings{});
}

TEST(RuleSet, ConditionsAreAllRequired) {
  const RuleSet rule_set = MakeRuleSet(
      {MakeBudget("b")},
      {MakeRule("r", "b",
                {{"route", {"/api/export"}}, {"tier", {"free", "trial"}}, {"username", {"app"}}})});
  EXPECT_EQ(Matches(rule_set, MakeMetadata({{"route", "/api/export"},
                                            {"tier", "trial"},
                                            {"username", "app"},
                                            {"extra", "ignored"}})),
            Strings{"b:r"});
  EXPECT_EQ(Matches(rule_set, MakeMetadata({{"route", "/api/export"}, {"tier", "trial"}})),
            Strings{});
  EXPECT_EQ(
      Matches(rule_set,
              MakeMetadata({{"route", "/api/export"}, {"tier", "paid"}, {"username", "app"}})),
      Strings{});
  EXPECT_EQ(Matches(rule_set, MakeMetadata({{"tier", "free"}, {"username", "app"}})), Strings{});
}

TEST(RuleSet, EmptyMatchMatchesEveryStatement) {
  const RuleSet rule_set = MakeRuleSet({MakeBudget("all")}, {MakeRule("r", "all", {})});
  EXPECT_FALSE(rule_set.empty());
  EXPECT_EQ(Matches(rule_set, MakeMetadata({})), Strings{"all:r"});
  EXPECT_EQ(Matches(rule_set, MakeMetadata({{"route", "x"}, {"remote_address", "10.0.0.1"}})),
            Strings{"all:r"});
}

TEST(RuleSet, SeveralRulesForOneBudgetReportTheFirstInConfigOrder) {
  const RuleSet rule_set =
      MakeRuleSet({MakeBudget("b")},
                  {MakeRule("by-route", "b", {{"route", {"/x"}}}),
                   MakeRule("by-app", "b", {{"app", {"web"}}}), MakeRule("everything", "b", {})});
  EXPECT_EQ(Matches(rule_set, MakeMetadata({{"app", "web"}, {"route", "/x"}})),
            Strings{"b:by-route"});
  EXPECT_EQ(Matches(rule_set, MakeMetadata({{"app", "web"}})), Strings{"b:by-app"});
  EXPECT_EQ(Matches(rule_set, MakeMetadata({{"app", "cli"}})), Strings{"b:everything"});
}

TEST(RuleSet, StatementMatchesSeveralBudgetsInBudgetOrder) {
  // Rules are listed in the opposite order of their budgets.
  const RuleSet rule_set = MakeRuleSet({MakeBudget("first"), MakeBudget("second")},
                                       {MakeRule("to-second", "second", {{"app", {"web"}}}),
                                        MakeRule("to-first", "first", {{"route", {"/x"}}})});
  EXPECT_EQ(Matches(rule_set, MakeMetadata({{"app", "web"}, {"route", "/x"}})),
            (Strings{"first:to-first", "second:to-second"}));
  EXPECT_EQ(Matches(rule_set, MakeMetadata({{"app", "web"}})), Strings{"second:to-second"});
}

TEST(RuleSet, UnknownBudgetIsReportedAndSkipped) {
  std::vector<RuleProblem> problems;
  const RuleSet rule_set({MakeBudget("known")},
                         {MakeRule("lost", "missing", {{"app", {"web"}}}),
                          MakeRule("kept", "known", {{"app", {"web"}}})},
                         &problems);
  ASSERT_EQ(problems.size(), 1u);
  EXPECT_EQ(problems[0].rule, "lost");
  EXPECT_EQ(problems[0].message, "budget \"missing\" does not exist; rule skipped");
  ASSERT_EQ(rule_set.rules().size(), 2u);  // still listed, for rule_status
  EXPECT_EQ(Matches(rule_set, MakeMetadata({{"app", "web"}})), Strings{"known:kept"});
  EXPECT_FALSE(rule_set.RuleMatches(0, MakeMetadata({{"app", "web"}})));
  EXPECT_TRUE(rule_set.RuleMatches(1, MakeMetadata({{"app", "web"}})));
}

TEST(RuleSet, OnlySkippedRulesMeansEmpty) {
  std::vector<RuleProblem> problems;
  const RuleSet rule_set({}, {MakeRule("lost", "missing", {})}, &problems);
  EXPECT_EQ(problems.size(), 1u);
  EXPECT_TRUE(rule_set.empty());
  EXPECT_EQ(Matches(rule_set, MakeMetadata({})), Strings{});
}

TEST(RuleSet, OffBudgetNeverMatchesAndIsNoProblem) {
  std::vector<RuleProblem> problems;
  const RuleSet rule_set(
      {MakeBudget("off", Mode::kOff), MakeBudget("warn", Mode::kWarn)},
      {MakeRule("r-off", "off", {}), MakeRule("r-off-app", "off", {{"app", {"web"}}})}, &problems);
  EXPECT_TRUE(problems.empty());
  EXPECT_TRUE(rule_set.empty());
  EXPECT_EQ(Matches(rule_set, MakeMetadata({{"app", "web"}})), Strings{});
  EXPECT_FALSE(rule_set.RuleMatches(0, MakeMetadata({})));

  const RuleSet mixed =
      MakeRuleSet({MakeBudget("off", Mode::kOff), MakeBudget("warn", Mode::kWarn)},
                  {MakeRule("r-off", "off", {{"app", {"web"}}}),
                   MakeRule("r-warn", "warn", {{"app", {"web"}}})});
  EXPECT_FALSE(mixed.empty());
  EXPECT_EQ(Matches(mixed, MakeMetadata({{"app", "web"}})), Strings{"warn:r-warn"});
}

// The server builds only the metadata keys some rule can use: a key used
// only by a rule of an "off" budget, or by no rule, is not.
TEST(RuleSet, KnowsWhichKeysItsRulesUse) {
  const RuleSet rule_set =
      MakeRuleSet({MakeBudget("a"), MakeBudget("off", Mode::kOff)},
                  {MakeRule("by-role", "a", {{"username", {"app"}}}, std::string("command")),
                   MakeRule("by-route", "a", {{"route", {"/x"}}}),
                   MakeRule("not-used", "off", {{"database", {"shop"}}, {"tenant", {"t"}}})});
  EXPECT_TRUE(rule_set.UsesBuiltinKey(kUsername));
  EXPECT_TRUE(rule_set.UsesBuiltinKey(kCommand));
  EXPECT_FALSE(rule_set.UsesBuiltinKey(kDatabase));
  EXPECT_FALSE(rule_set.UsesBuiltinKey(kApplicationName));
  EXPECT_FALSE(rule_set.UsesBuiltinKey(kRemoteAddress));
  EXPECT_FALSE(rule_set.UsesBuiltinKey(kQueryId));
  EXPECT_TRUE(rule_set.UsesTagKeys());
  EXPECT_TRUE(rule_set.UsesKey("route"));
  EXPECT_FALSE(rule_set.UsesKey("tenant"));

  const RuleSet builtins_only =
      MakeRuleSet({MakeBudget("a")}, {MakeRule("r", "a", {{"query_id", {"42"}}})});
  EXPECT_TRUE(builtins_only.UsesBuiltinKey(kQueryId));
  EXPECT_FALSE(builtins_only.UsesTagKeys());
  EXPECT_FALSE(RuleSet().UsesTagKeys());
}

TEST(RuleSet, EachGivesOneInstancePerValue) {
  const RuleSet rule_set = MakeRuleSet(
      {MakeBudget("tenant-share")},
      {MakeRule("per-tenant", "tenant-share", {{"app", {"web"}}}, std::string("tenant"))});
  EXPECT_EQ(Matches(rule_set, MakeMetadata({{"app", "web"}, {"tenant", "acme"}})),
            Strings{"tenant-share[acme]:per-tenant"});
  EXPECT_EQ(Matches(rule_set, MakeMetadata({{"app", "web"}, {"tenant", "globex"}})),
            Strings{"tenant-share[globex]:per-tenant"});
  EXPECT_EQ(Matches(rule_set, MakeMetadata({{"app", "web"}, {"tenant", ""}})),
            Strings{"tenant-share[]:per-tenant"});
  EXPECT_EQ(Matches(rule_set, MakeMetadata({{"app", "web"}})), Strings{});
  EXPECT_EQ(Matches(rule_set, MakeMetadata({{"app", "cli"}, {"tenant", "acme"}})), Strings{});
  EXPECT_FALSE(rule_set.RuleMatches(0, MakeMetadata({{"app", "web"}})));
}

TEST(RuleSet, EachOnEmptyMatchAndOnBuiltinKey) {
  const RuleSet rule_set = MakeRuleSet({MakeBudget("per-user")},
                                       {MakeRule("r", "per-user", {}, std::string("username"))});
  EXPECT_EQ(Matches(rule_set, MakeMetadata({{"username", "alice"}})), Strings{"per-user[alice]:r"});
  EXPECT_EQ(Matches(rule_set, MakeMetadata({{"route", "x"}})), Strings{});
}

TEST(RuleSet, InstancesAndPlainMatchOfOneBudgetAreDistinct) {
  // (budget, no instance) and (budget, "acme") are different buckets; two
  // `each` keys giving the same value name the same bucket, reported once.
  const RuleSet rule_set =
      MakeRuleSet({MakeBudget("b")}, {MakeRule("by-user", "b", {}, std::string("username")),
                                      MakeRule("plain", "b", {{"app", {"web"}}}),
                                      MakeRule("by-tenant", "b", {}, std::string("tenant"))});
  EXPECT_EQ(
      Matches(rule_set, MakeMetadata({{"app", "web"}, {"tenant", "acme"}, {"username", "acme"}})),
      (Strings{"b:plain", "b[acme]:by-user"}));
  EXPECT_EQ(
      Matches(rule_set, MakeMetadata({{"app", "web"}, {"tenant", "zeta"}, {"username", "acme"}})),
      (Strings{"b:plain", "b[acme]:by-user", "b[zeta]:by-tenant"}));
}

TEST(RuleSet, OutputIsSortedDeduplicatedAndAppended) {
  const RuleSet rule_set = MakeRuleSet(
      {MakeBudget("a"), MakeBudget("b"), MakeBudget("c")},
      {MakeRule("c1", "c", {{"app", {"web"}}}),
       MakeRule("b-tenant", "b", {}, std::string("tenant")),
       MakeRule("b-user", "b", {}, std::string("username")),
       MakeRule("a1", "a", {{"app", {"web"}}}), MakeRule("c2", "c", {}), MakeRule("a2", "a", {})});
  std::vector<BudgetMatch> out(1);
  out[0].budget_index = 99;  // an earlier entry stays untouched
  rule_set.Match(MakeMetadata({{"app", "web"}, {"tenant", "zeta"}, {"username", "alice"}}), &out);
  ASSERT_EQ(out.size(), 5u);
  EXPECT_EQ(out[0].budget_index, 99u);
  const std::vector<std::tuple<std::uint32_t, bool, std::string, std::uint32_t>> expected = {
      {0, false, "", 3}, {1, true, "alice", 2}, {1, true, "zeta", 1}, {2, false, "", 0}};
  for (std::size_t i = 0; i < expected.size(); ++i) {
    const BudgetMatch& match = out[i + 1];
    EXPECT_EQ(std::tie(match.budget_index, match.has_instance, match.instance, match.rule_index),
              expected[i])
        << "entry " << i;
  }
}

TEST(RuleSet, CidrV4ByPrefixLength) {
  const RuleSet rule_set =
      MakeRuleSet({MakeBudget("any"), MakeBudget("ten"), MakeBudget("office"), MakeBudget("desk"),
                   MakeBudget("host")},
                  {MakeRule("r-any", "any", {{"remote_address", {"0.0.0.0/0"}}}),
                   MakeRule("r-ten", "ten", {{"remote_address", {"10.0.0.0/8"}}}),
                   MakeRule("r-office", "office", {{"remote_address", {"10.1.0.0/16"}}}),
                   MakeRule("r-desk", "desk", {{"remote_address", {"10.1.2.0/24"}}}),
                   MakeRule("r-host", "host", {{"remote_address", {"10.1.2.3/32"}}})});
  // Both the longest and the shortest prefixes match, each its own budget.
  EXPECT_EQ(Matches(rule_set, MakeMetadata({{"remote_address", "10.1.2.3"}})),
            (Strings{"any:r-any", "ten:r-ten", "office:r-office", "desk:r-desk", "host:r-host"}));
  EXPECT_EQ(Matches(rule_set, MakeMetadata({{"remote_address", "10.1.2.4"}})),
            (Strings{"any:r-any", "ten:r-ten", "office:r-office", "desk:r-desk"}));
  EXPECT_EQ(Matches(rule_set, MakeMetadata({{"remote_address", "10.1.3.3"}})),
            (Strings{"any:r-any", "ten:r-ten", "office:r-office"}));
  EXPECT_EQ(Matches(rule_set, MakeMetadata({{"remote_address", "10.2.0.1"}})),
            (Strings{"any:r-any", "ten:r-ten"}));
  EXPECT_EQ(Matches(rule_set, MakeMetadata({{"remote_address", "192.168.0.1"}})),
            Strings{"any:r-any"});
  // An IPv4-mapped IPv6 address is compared as the IPv4 address.
  EXPECT_EQ(Matches(rule_set, MakeMetadata({{"remote_address", "::ffff:10.1.2.3"}})).size(), 5u);
  // IPv6 never matches an IPv4 network, not even 0.0.0.0/0.
  EXPECT_EQ(Matches(rule_set, MakeMetadata({{"remote_address", "::1"}})), Strings{});
}

TEST(RuleSet, CidrV6ByPrefixLength) {
  const RuleSet rule_set =
      MakeRuleSet({MakeBudget("any6"), MakeBudget("doc"), MakeBudget("site"), MakeBudget("host")},
                  {MakeRule("r-any6", "any6", {{"remote_address", {"::/0"}}}),
                   MakeRule("r-doc", "doc", {{"remote_address", {"2001:db8::/32"}}}),
                   MakeRule("r-site", "site", {{"remote_address", {"2001:db8:1::/48"}}}),
                   MakeRule("r-host", "host", {{"remote_address", {"2001:db8:1::5/128"}}})});
  EXPECT_EQ(Matches(rule_set, MakeMetadata({{"remote_address", "2001:db8:1::5"}})),
            (Strings{"any6:r-any6", "doc:r-doc", "site:r-site", "host:r-host"}));
  EXPECT_EQ(Matches(rule_set, MakeMetadata({{"remote_address", "2001:db8:2::5"}})),
            (Strings{"any6:r-any6", "doc:r-doc"}));
  EXPECT_EQ(Matches(rule_set, MakeMetadata({{"remote_address", "fe80::1"}})),
            Strings{"any6:r-any6"});
  EXPECT_EQ(Matches(rule_set, MakeMetadata({{"remote_address", "10.1.2.3"}})), Strings{});
  EXPECT_EQ(Matches(rule_set, MakeMetadata({{"remote_address", "::ffff:10.1.2.3"}})), Strings{});
}

TEST(RuleSet, CidrConditionWithSeveralPrefixes) {
  // One rule lists networks of different lengths; an address inside two of
  // them still yields one match.
  const RuleSet rule_set = MakeRuleSet(
      {MakeBudget("office")},
      {MakeRule(
          "r", "office",
          {{"remote_address",
            {"10.0.0.0/8", "10.1.0.0/16", "192.168.7.0/24", "2001:db8::/32", "10.0.0.0/8"}}})});
  EXPECT_EQ(Matches(rule_set, MakeMetadata({{"remote_address", "10.1.2.3"}})), Strings{"office:r"});
  EXPECT_EQ(Matches(rule_set, MakeMetadata({{"remote_address", "192.168.7.200"}})),
            Strings{"office:r"});
  EXPECT_EQ(Matches(rule_set, MakeMetadata({{"remote_address", "2001:db8::1"}})),
            Strings{"office:r"});
  EXPECT_EQ(Matches(rule_set, MakeMetadata({{"remote_address", "192.168.8.1"}})), Strings{});
}

TEST(RuleSet, RemoteAddressThatDoesNotParseMatchesNoNetwork) {
  const RuleSet rule_set =
      MakeRuleSet({MakeBudget("any"), MakeBudget("web")},
                  {MakeRule("r-any", "any", {{"remote_address", {"0.0.0.0/0", "::/0"}}}),
                   MakeRule("r-web", "web", {{"app", {"web"}}})});
  for (const char* address : {"", "[local]", "10.1.2", "10.1.2.3/16", "host.example"}) {
    EXPECT_EQ(Matches(rule_set, MakeMetadata({{"remote_address", address}, {"app", "web"}})),
              Strings{"web:r-web"})
        << address;
  }
  EXPECT_EQ(Matches(rule_set, MakeMetadata({{"app", "web"}})), Strings{"web:r-web"});
}

TEST(RuleSet, RemoteAddressValueThatIsANetwork) {
  // A network lies inside shorter networks only.
  const RuleSet rule_set =
      MakeRuleSet({MakeBudget("wide"), MakeBudget("narrow")},
                  {MakeRule("r-wide", "wide", {{"remote_address", {"10.0.0.0/8"}}}),
                   MakeRule("r-narrow", "narrow", {{"remote_address", {"10.1.2.0/24"}}})});
  EXPECT_EQ(Matches(rule_set, MakeMetadata({{"remote_address", "10.1.0.0/16"}})),
            Strings{"wide:r-wide"});
}

TEST(RuleSet, RemoteAddressCombinedWithAnotherKey) {
  const RuleSet rule_set = MakeRuleSet(
      {MakeBudget("office-web")},
      {MakeRule("r", "office-web", {{"remote_address", {"10.1.0.0/16"}}, {"app", {"web"}}})});
  EXPECT_EQ(Matches(rule_set, MakeMetadata({{"remote_address", "10.1.9.9"}, {"app", "web"}})),
            Strings{"office-web:r"});
  EXPECT_EQ(Matches(rule_set, MakeMetadata({{"remote_address", "10.2.9.9"}, {"app", "web"}})),
            Strings{});
  EXPECT_EQ(Matches(rule_set, MakeMetadata({{"remote_address", "10.1.9.9"}, {"app", "cli"}})),
            Strings{});
  EXPECT_EQ(Matches(rule_set, MakeMetadata({{"app", "web"}})), Strings{});
}

TEST(RuleSet, RemoteAddressAnchorWhenOtherKeysAreCommon) {
  // Every rule shares app=web, so the networks are the selective anchor; the
  // app condition must still be verified.
  std::vector<Budget> budgets;
  std::vector<Rule> rules;
  for (int i = 0; i < 50; ++i) {
    budgets.push_back(MakeBudget("net" + std::to_string(i)));
    rules.push_back(
        MakeRule("r" + std::to_string(i), budgets.back().name,
                 {{"app", {"web"}}, {"remote_address", {"10." + std::to_string(i) + ".0.0/16"}}}));
  }
  const RuleSet rule_set = MakeRuleSet(std::move(budgets), std::move(rules));
  EXPECT_EQ(Matches(rule_set, MakeMetadata({{"remote_address", "10.7.1.1"}, {"app", "web"}})),
            Strings{"net7:r7"});
  EXPECT_EQ(Matches(rule_set, MakeMetadata({{"remote_address", "10.7.1.1"}, {"app", "cli"}})),
            Strings{});
  EXPECT_EQ(Matches(rule_set, MakeMetadata({{"remote_address", "10.99.1.1"}, {"app", "web"}})),
            Strings{});
}

TEST(RuleSet, RemoteAddressRuleValueThatDoesNotParseIsReported) {
  // The config parser rejects this; the rule set still never misbehaves.
  std::vector<RuleProblem> problems;
  const RuleSet rule_set({MakeBudget("b")},
                         {MakeRule("bad", "b", {{"remote_address", {"office"}}}),
                          MakeRule("half", "b", {{"remote_address", {"office", "10.0.0.0/8"}}})},
                         &problems);
  ASSERT_EQ(problems.size(), 2u);
  EXPECT_EQ(problems[0].rule, "bad");
  EXPECT_EQ(problems[0].message,
            "remote_address \"office\" is not an address or CIDR; value ignored");
  EXPECT_EQ(Matches(rule_set, MakeMetadata({{"remote_address", "10.0.0.1"}})), Strings{"b:half"});
  EXPECT_EQ(Matches(rule_set, MakeMetadata({{"remote_address", "office"}})), Strings{});
}

TEST(RuleSet, RuleMatchesChecksOneRule) {
  const RuleSet rule_set =
      MakeRuleSet({MakeBudget("b")}, {MakeRule("r0", "b", {{"app", {"web"}}}),
                                      MakeRule("r1", "b", {{"remote_address", {"10.0.0.0/8"}}})});
  const Metadata metadata = MakeMetadata({{"app", "web"}, {"remote_address", "10.0.0.1"}});
  EXPECT_TRUE(rule_set.RuleMatches(0, metadata));
  EXPECT_TRUE(rule_set.RuleMatches(1, metadata));  // Match() reports only r0 for budget b
  EXPECT_FALSE(rule_set.RuleMatches(0, MakeMetadata({{"app", "cli"}})));
  EXPECT_FALSE(rule_set.RuleMatches(1, MakeMetadata({{"remote_address", "11.0.0.1"}})));
  EXPECT_FALSE(rule_set.RuleMatches(2, metadata));
}

TEST(RuleSet, CopiesShareTheCompiledIndex) {
  RuleSet copy;
  {
    const RuleSet original =
        MakeRuleSet({MakeBudget("b")}, {MakeRule("r", "b", {{"app", {"web"}}})});
    copy = original;
  }
  EXPECT_EQ(Matches(copy, MakeMetadata({{"app", "web"}})), Strings{"b:r"});
}

TEST(RuleSet, ThousandRulesStatementMatchesExactlyOne) {
  // Every rule shares app=web and differs in its tenant, plus a few network
  // rules: the index must find the one rule, and nothing else.
  std::vector<Budget> budgets;
  std::vector<Rule> rules;
  for (int i = 0; i < 1000; ++i) {
    const std::string n = std::to_string(i);
    budgets.push_back(MakeBudget("budget" + n));
    if (i % 100 == 99) {
      rules.push_back(
          MakeRule("rule" + n, "budget" + n,
                   {{"remote_address", {"172.16." + std::to_string(i / 100) + ".0/24"}}}));
    } else {
      rules.push_back(MakeRule("rule" + n, "budget" + n,
                               {{"app", {"web"}}, {"tenant", {"t" + n, "alias" + n}}}));
    }
  }
  const RuleSet rule_set = MakeRuleSet(std::move(budgets), std::move(rules));
  EXPECT_EQ(Matches(rule_set, MakeMetadata({{"app", "web"},
                                            {"tenant", "t500"},
                                            {"remote_address", "192.168.1.1"},
                                            {"username", "app"}})),
            Strings{"budget500:rule500"});
  EXPECT_EQ(Matches(rule_set, MakeMetadata({{"app", "web"}, {"tenant", "alias998"}})),
            Strings{"budget998:rule998"});
  EXPECT_EQ(Matches(rule_set, MakeMetadata({{"remote_address", "172.16.3.4"}})),
            Strings{"budget399:rule399"});
  EXPECT_EQ(Matches(rule_set, MakeMetadata({{"app", "cli"}, {"tenant", "t500"}})), Strings{});
  EXPECT_EQ(Matches(rule_set, MakeMetadata({{"app", "web"}, {"tenant", "t99"}})), Strings{});
}

TEST(RuleSet, DefaultRuleCatchesOnlyWhatNoOtherRuleMatched) {
  const RuleSet rule_set =
      MakeRuleSet({MakeBudget("critical"), MakeBudget("best-effort")},
                  {MakeDefaultRule("everything-else", "best-effort"),
                   MakeRule("checkout", "critical", {{"route", {"checkout"}}})});
  EXPECT_EQ(Matches(rule_set, MakeMetadata({})), Strings{"best-effort:everything-else"});
  EXPECT_EQ(Matches(rule_set, MakeMetadata({{"route", "search"}})),
            Strings{"best-effort:everything-else"});
  EXPECT_EQ(Matches(rule_set, MakeMetadata({{"route", "checkout"}})), Strings{"critical:checkout"});
  EXPECT_FALSE(rule_set.RuleMatches(0, MakeMetadata({{"route", "checkout"}})));
  EXPECT_TRUE(rule_set.RuleMatches(0, MakeMetadata({{"route", "search"}})));
  // The other rule's key is needed to know it did not match.
  EXPECT_TRUE(rule_set.UsesKey("route"));
}

TEST(RuleSet, DefaultRuleMatchMustHoldToo) {
  const RuleSet rule_set = MakeRuleSet(
      {MakeBudget("critical"), MakeBudget("web-rest")},
      {MakeRule("checkout", "critical", {{"route", {"checkout"}}}),
       MakeDefaultRule("web-rest", "web-rest", {{"app", {"web"}}}, std::string("tenant"))});
  EXPECT_EQ(Matches(rule_set, MakeMetadata({{"app", "web"}, {"tenant", "acme"}})),
            Strings{"web-rest[acme]:web-rest"});
  EXPECT_EQ(Matches(rule_set, MakeMetadata({{"app", "cli"}, {"tenant", "acme"}})), Strings{});
  EXPECT_EQ(Matches(rule_set, MakeMetadata({{"app", "web"}})), Strings{});  // no `each` key
  EXPECT_EQ(
      Matches(rule_set, MakeMetadata({{"app", "web"}, {"tenant", "acme"}, {"route", "checkout"}})),
      Strings{"critical:checkout"});
}

TEST(RuleSet, RuleWithEachCountsForDefaultOnlyWithItsKey) {
  const RuleSet rule_set = MakeRuleSet(
      {MakeBudget("tenant-share"), MakeBudget("best-effort")},
      {MakeRule("per-tenant", "tenant-share", {{"app", {"web"}}}, std::string("tenant")),
       MakeDefaultRule("rest", "best-effort")});
  EXPECT_EQ(Matches(rule_set, MakeMetadata({{"app", "web"}, {"tenant", "acme"}})),
            Strings{"tenant-share[acme]:per-tenant"});
  // Without the `each` key the per-tenant rule does not match: the default does.
  EXPECT_EQ(Matches(rule_set, MakeMetadata({{"app", "web"}})), Strings{"best-effort:rest"});
}

TEST(RuleSet, RuleOfAnOffOrUnknownBudgetStillKeepsDefaultAway) {
  std::vector<RuleProblem> problems;
  const RuleSet rule_set({MakeBudget("critical", Mode::kOff), MakeBudget("best-effort")},
                         {MakeRule("checkout", "critical", {{"route", {"checkout"}}}),
                          MakeRule("typo", "critcal", {{"route", {"pay"}}}, std::string("tenant")),
                          MakeDefaultRule("rest", "best-effort")},
                         &problems);
  ASSERT_EQ(problems.size(), 1u);
  EXPECT_EQ(problems[0].rule, "typo");
  EXPECT_EQ(Matches(rule_set, MakeMetadata({{"route", "checkout"}})), Strings{});
  EXPECT_EQ(Matches(rule_set, MakeMetadata({{"route", "pay"}, {"tenant", "t"}})), Strings{});
  EXPECT_EQ(Matches(rule_set, MakeMetadata({{"route", "pay"}})), Strings{"best-effort:rest"});
  EXPECT_EQ(Matches(rule_set, MakeMetadata({{"route", "home"}})), Strings{"best-effort:rest"});
  EXPECT_FALSE(rule_set.RuleMatches(2, MakeMetadata({{"route", "checkout"}})));
  // A rule of an off budget is not a match of its own.
  EXPECT_FALSE(rule_set.RuleMatches(0, MakeMetadata({{"route", "checkout"}})));
  EXPECT_TRUE(rule_set.UsesKey("tenant"));
}

TEST(RuleSet, OffOrUnknownRulesAreNotIndexedWithoutDefaultRules) {
  std::vector<RuleProblem> problems;
  const RuleSet rule_set(
      {MakeBudget("off", Mode::kOff), MakeBudget("b")},
      {MakeRule("r-off", "off", {{"route", {"x"}}}),
       MakeRule("lost", "missing", {{"tenant", {"t"}}}), MakeRule("r", "b", {{"app", {"web"}}})},
      &problems);
  EXPECT_FALSE(rule_set.UsesKey("route"));
  EXPECT_FALSE(rule_set.UsesKey("tenant"));
  EXPECT_EQ(Matches(rule_set, MakeMetadata({{"app", "web"}, {"route", "x"}})), Strings{"b:r"});
}

TEST(RuleSet, SeveralDefaultRulesApplyTogether) {
  const RuleSet rule_set = MakeRuleSet(
      {MakeBudget("a"), MakeBudget("b"), MakeBudget("c")},
      {MakeRule("tagged", "a", {{"route", {"x"}}}),
       MakeDefaultRule("rest-web", "b", {{"app", {"web"}}}), MakeDefaultRule("rest", "c")});
  EXPECT_EQ(Matches(rule_set, MakeMetadata({{"app", "web"}})), (Strings{"b:rest-web", "c:rest"}));
  EXPECT_EQ(Matches(rule_set, MakeMetadata({{"app", "cli"}})), Strings{"c:rest"});
  EXPECT_EQ(Matches(rule_set, MakeMetadata({{"app", "web"}, {"route", "x"}})), Strings{"a:tagged"});
}

TEST(RuleSet, DefaultRuleOfAnOffBudgetNeverMatches) {
  const RuleSet rule_set =
      MakeRuleSet({MakeBudget("a"), MakeBudget("off", Mode::kOff)},
                  {MakeRule("tagged", "a", {{"route", {"x"}}}), MakeDefaultRule("rest", "off")});
  EXPECT_EQ(Matches(rule_set, MakeMetadata({})), Strings{});
  EXPECT_FALSE(rule_set.RuleMatches(1, MakeMetadata({})));
  // Only a default of an off budget: nothing to shield, the other rules'
  // keys need not be built for it.
  const RuleSet only_off_default =
      MakeRuleSet({MakeBudget("off", Mode::kOff), MakeBudget("a")},
                  {MakeRule("r", "a", {{"app", {"web"}}}),
                   MakeRule("shield", "off", {{"t", {"x"}}}), MakeDefaultRule("rest", "off")});
  EXPECT_FALSE(only_off_default.UsesKey("t"));
}

TEST(RuleSet, NotHoldsForOtherValuesAndForAMissingKey) {
  const RuleSet rule_set =
      MakeRuleSet({MakeBudget("b")}, {MakeRule("r", "b", {Not("route", {"checkout"})})});
  EXPECT_EQ(Matches(rule_set, MakeMetadata({{"route", "search"}})), Strings{"b:r"});
  EXPECT_EQ(Matches(rule_set, MakeMetadata({})), Strings{"b:r"});
  EXPECT_EQ(Matches(rule_set, MakeMetadata({{"route", "checkout"}})), Strings{});
  EXPECT_FALSE(rule_set.RuleMatches(0, MakeMetadata({{"route", "checkout"}})));
}

TEST(RuleSet, NotWithAnArrayIsNoneOf) {
  const RuleSet rule_set = MakeRuleSet(
      {MakeBudget("b")},
      {MakeRule("r", "b", {{"app", {"web"}}, Not("tier", {"enterprise", "internal"})})});
  EXPECT_EQ(Matches(rule_set, MakeMetadata({{"app", "web"}, {"tier", "free"}})), Strings{"b:r"});
  EXPECT_EQ(Matches(rule_set, MakeMetadata({{"app", "web"}})), Strings{"b:r"});
  EXPECT_EQ(Matches(rule_set, MakeMetadata({{"app", "web"}, {"tier", "enterprise"}})), Strings{});
  EXPECT_EQ(Matches(rule_set, MakeMetadata({{"app", "web"}, {"tier", "internal"}})), Strings{});
  EXPECT_EQ(Matches(rule_set, MakeMetadata({{"app", "cli"}, {"tier", "free"}})), Strings{});
}

TEST(RuleSet, NotOnRemoteAddressExcludesNetworks) {
  const RuleSet rule_set = MakeRuleSet(
      {MakeBudget("b")}, {MakeRule("r", "b", {Not("remote_address", {"10.0.0.0/8", "::1"})})});
  EXPECT_EQ(Matches(rule_set, MakeMetadata({{"remote_address", "192.168.1.1"}})), Strings{"b:r"});
  EXPECT_EQ(Matches(rule_set, MakeMetadata({{"remote_address", "10.2.3.4"}})), Strings{});
  EXPECT_EQ(Matches(rule_set, MakeMetadata({{"remote_address", "::1"}})), Strings{});
  // A Unix-socket connection has no address: "not from 10/8" holds.
  EXPECT_EQ(Matches(rule_set, MakeMetadata({})), Strings{"b:r"});
}

TEST(RuleSet, PrefixMatchesTheStartOfTheValue) {
  const RuleSet rule_set = MakeRuleSet(
      {MakeBudget("api"), MakeBudget("exports")},
      {MakeRule("api", "api", {Prefix("route", {"/api/"})}),
       MakeRule("exports", "exports", {Prefix("route", {"/api/export", "/reports/"})})});
  EXPECT_EQ(Matches(rule_set, MakeMetadata({{"route", "/api/users"}})), Strings{"api:api"});
  EXPECT_EQ(Matches(rule_set, MakeMetadata({{"route", "/api/"}})), Strings{"api:api"});
  EXPECT_EQ(Matches(rule_set, MakeMetadata({{"route", "/api/export/csv"}})),
            (Strings{"api:api", "exports:exports"}));
  EXPECT_EQ(Matches(rule_set, MakeMetadata({{"route", "/reports/daily"}})),
            Strings{"exports:exports"});
  EXPECT_EQ(Matches(rule_set, MakeMetadata({{"route", "/api"}})), Strings{});
  EXPECT_EQ(Matches(rule_set, MakeMetadata({{"route", "/API/users"}})), Strings{});
  EXPECT_EQ(Matches(rule_set, MakeMetadata({{"path", "/api/users"}})), Strings{});
  EXPECT_EQ(Matches(rule_set, MakeMetadata({})), Strings{});
}

TEST(RuleSet, EmptyPrefixMeansTheKeyIsPresent) {
  const RuleSet rule_set =
      MakeRuleSet({MakeBudget("b")}, {MakeRule("r", "b", {Prefix("tenant", {""})})});
  EXPECT_EQ(Matches(rule_set, MakeMetadata({{"tenant", ""}})), Strings{"b:r"});
  EXPECT_EQ(Matches(rule_set, MakeMetadata({{"tenant", "acme"}})), Strings{"b:r"});
  EXPECT_EQ(Matches(rule_set, MakeMetadata({{"app", "web"}})), Strings{});
}

TEST(RuleSet, PrefixAndNotCombineWithOtherConditions) {
  const RuleSet rule_set = MakeRuleSet(
      {MakeBudget("b")},
      {MakeRule("r", "b",
                {{"app", {"web"}}, Prefix("route", {"/api/"}), Not("route", {"/api/health"})})});
  EXPECT_EQ(Matches(rule_set, MakeMetadata({{"app", "web"}, {"route", "/api/users"}})),
            Strings{"b:r"});
  EXPECT_EQ(Matches(rule_set, MakeMetadata({{"app", "web"}, {"route", "/api/health"}})), Strings{});
  EXPECT_EQ(Matches(rule_set, MakeMetadata({{"app", "cli"}, {"route", "/api/users"}})), Strings{});
}

TEST(RuleSet, ThousandPrefixRulesFindTheirOwn) {
  std::vector<Budget> budgets;
  std::vector<Rule> rules;
  for (int i = 0; i < 1000; ++i) {
    const std::string n = std::to_string(i);
    budgets.push_back(MakeBudget("budget" + n));
    rules.push_back(MakeRule("rule" + n, "budget" + n, {Prefix("route", {"/t" + n + "/"})}));
  }
  const RuleSet rule_set = MakeRuleSet(std::move(budgets), std::move(rules));
  EXPECT_EQ(Matches(rule_set, MakeMetadata({{"route", "/t500/orders"}})),
            Strings{"budget500:rule500"});
  EXPECT_EQ(Matches(rule_set, MakeMetadata({{"route", "/t5/"}})), Strings{"budget5:rule5"});
  EXPECT_EQ(Matches(rule_set, MakeMetadata({{"route", "/t5000/"}})), Strings{});
}

TEST(RuleSet, MemberOfMatchesAnyRoleTheServerResolved) {
  const RuleSet rule_set =
      MakeRuleSet({MakeBudget("analytics"), MakeBudget("not-staff")},
                  {MakeRule("analysts", "analytics", {{"member_of", {"analysts", "data_science"}}}),
                   MakeRule("outsiders", "not-staff", {Not("member_of", {"staff"})})});
  EXPECT_TRUE(rule_set.UsesBuiltinKey(kMemberOf));
  EXPECT_EQ(rule_set.member_of_roles(), (Strings{"analysts", "data_science", "staff"}));
  EXPECT_EQ(Matches(rule_set, ServerMetadata({"staff", "analysts"})),
            Strings{"analytics:analysts"});
  EXPECT_EQ(Matches(rule_set, ServerMetadata({"data_science"})),
            (Strings{"analytics:analysts", "not-staff:outsiders"}));
  EXPECT_EQ(Matches(rule_set, ServerMetadata({"staff"})), Strings{});
  EXPECT_EQ(Matches(rule_set, ServerMetadata({})), Strings{"not-staff:outsiders"});
}

TEST(RuleSet, TagsCannotSetMemberOf) {
  const RuleSet rule_set =
      MakeRuleSet({MakeBudget("b"), MakeBudget("rest")},
                  {MakeRule("admins", "b", {{"member_of", {"admins"}}}),
                   MakeRule("not-admins", "rest", {Not("member_of", {"admins"})})});
  const Metadata tagged = ServerMetadata({}, "SELECT 1 /*member_of='admins'*/", "alice");
  EXPECT_EQ(tagged.Find("member_of"), nullptr);
  EXPECT_EQ(Matches(rule_set, tagged), Strings{"rest:not-admins"});
  EXPECT_EQ(Matches(rule_set, ServerMetadata({"admins"}, "SELECT 1 /*member_of='x'*/")),
            Strings{"b:admins"});
}

TEST(RuleSet, MemberOfRolesComeOnlyFromRulesThatCanMatch) {
  std::vector<RuleProblem> problems;
  const RuleSet rule_set({MakeBudget("off", Mode::kOff), MakeBudget("b")},
                         {MakeRule("r-off", "off", {{"member_of", {"ghosts"}}}),
                          MakeRule("r", "b", {{"member_of", {"writers", "readers", "writers"}}})},
                         &problems);
  EXPECT_EQ(rule_set.member_of_roles(), (Strings{"readers", "writers"}));
  EXPECT_TRUE(RuleSet().member_of_roles().empty());
  const RuleSet without =
      MakeRuleSet({MakeBudget("b")}, {MakeRule("r", "b", {{"username", {"alice"}}})});
  EXPECT_TRUE(without.member_of_roles().empty());
  EXPECT_FALSE(without.UsesBuiltinKey(kMemberOf));
}

TEST(RuleSet, DefaultRuleWithMemberOfAndPrefixRules) {
  const RuleSet rule_set = MakeRuleSet(
      {MakeBudget("critical"), MakeBudget("best-effort")},
      {MakeRule("app-users", "critical", {{"member_of", {"app"}}, Prefix("route", {"/checkout"})}),
       MakeDefaultRule("rest", "best-effort")});
  Metadata metadata = ServerMetadata({"app"}, "SELECT 1 /*route='/checkout/pay'*/");
  EXPECT_EQ(Matches(rule_set, metadata), Strings{"critical:app-users"});
  metadata = ServerMetadata({}, "SELECT 1 /*route='/checkout/pay'*/");
  EXPECT_EQ(Matches(rule_set, metadata), Strings{"best-effort:rest"});
}

}  // namespace
}  // namespace tc
