#include "traffic_control/sqlcommenter.hpp"

#include <gtest/gtest.h>

#include <cstdint>
#include <ostream>
#include <random>
#include <string>
#include <string_view>
#include <vector>

namespace tc {

// Readable failure messages for EXPECT_EQ on tag vectors.
void PrintTo(const Tag& tag, std::ostream* os) { *os << tag.key << "='" << tag.value << "'"; }

namespace {

using Tags = std::vector<Tag>;

struct ParseCase {
  const char* name;
  std::string_view sql;
  Tags expected;
};

void PrintTo(const ParseCase& c, std::ostream* os) { *os << c.name; }

const Tags kRouteX = {{"route", "x"}};

// Each case is a statement's text and the tags it must yield. Many cases are built so that a
// scanner that ignores one lexical rule would get a different answer.
const ParseCase kParseCases[] = {
    // Basic shapes.
    {"Plain",
     "SELECT 1 /*route='checkout',priority='critical'*/",
     {{"route", "checkout"}, {"priority", "critical"}}},
    {"OnlyAComment", "/*route='x'*/", kRouteX},
    {"Semicolon", "SELECT 1 /*route='x'*/;", kRouteX},
    {"TrailingWhitespaceAndSemicolons", "SELECT 1 /*route='x'*/ ;\n\t;; \r\n", kRouteX},
    {"SpacesAroundSeparators",
     "SELECT 1 /*  route = 'a' ,  tier='b'  */",
     {{"route", "a"}, {"tier", "b"}}},
    {"NewlinesInsideComment",
     "SELECT 1 /*\n\troute='a',\n\ttier='b'\n*/",
     {{"route", "a"}, {"tier", "b"}}},
    {"TrailingCommaInComment", "SELECT 1 /*route='x',*/", kRouteX},
    {"EmptyValue", "SELECT 1 /*route=''*/", {{"route", ""}}},
    {"CommaAndEqualsInsideValue", "SELECT 1 /*a='x,y=z',b='w'*/", {{"a", "x,y=z"}, {"b", "w"}}},
    {"KeysAreCaseSensitive", "SELECT 1 /*Route='a',route='b'*/", {{"Route", "a"}, {"route", "b"}}},
    {"BuiltinKeysAreStillParsed", "SELECT 1 /*username='postgres'*/", {{"username", "postgres"}}},
    {"OperatorBeforeComment", "SELECT 2 */*route='x'*/", kRouteX},

    // Decoding.
    {"UrlDecoding", "SELECT 1 /*route='%2Fapi%2Fexport'*/", {{"route", "/api/export"}}},
    {"UrlDecodingLowercaseHex", "SELECT 1 /*route='%2fapi'*/", {{"route", "/api"}}},
    {"UrlDecodedKey", "SELECT 1 /*my%20key='v'*/", {{"my key", "v"}}},
    {"PlusIsNotASpace", "SELECT 1 /*q='a+b'*/", {{"q", "a+b"}}},
    {"EncodedQuote", "SELECT 1 /*name='O%27Brien'*/", {{"name", "O'Brien"}}},
    {"BackslashQuote", R"(SELECT 1 /*name='O\'Brien',b='c'*/)", {{"name", "O'Brien"}, {"b", "c"}}},
    {"BackslashBackslash",
     R"(SELECT 1 /*path='C:\\dir\\',b='c'*/)",
     {{"path", R"(C:\dir\)"}, {"b", "c"}}},
    {"BackslashThenPercentDecode", R"(SELECT 1 /*v='\%41'*/)", {{"v", "A"}}},

    // Comments inside literals are not comments.
    {"CommentInsideStringLiteral", "SELECT '/*a=''b''*/'", {}},
    {"CommentOpenerInsideStringLiteral", "SELECT '/*', 1 /*route='x'*/", kRouteX},
    {"DoubledQuoteInString", "SELECT 'it''s /*' /*route='x'*/", kRouteX},
    {"BackslashIsLiteralInStandardString", R"(SELECT 'C:\' /*route='x'*/)", kRouteX},
    {"EscapeStringBackslashQuote", R"(SELECT E'\'', 1 /*route='x'*/)", kRouteX},
    {"EscapeStringDoubledQuote", R"(SELECT E'''\'', 1 /*route='x'*/)", kRouteX},
    {"LowercaseEscapeString", R"(SELECT e'\'', 1 /*route='x'*/)", kRouteX},
    {"CommentInsideEscapeString", R"(SELECT E'\' /*a=''b''*/' /*route='x'*/)", kRouteX},
    {"EscapeStringHidesTag", R"(SELECT E'\' /*route=\'x\'*/)", {}},
    {"IdentifierEndingInEIsNotEscapeString", R"(SELECT date'\' /*route='x'*/)", kRouteX},
    {"EscapeStringContinuationKeepsEscapes", "SELECT E'a'\n'\\' /*' /*route='x'*/", kRouteX},
    {"EscapeStringContinuationAfterLineComment", "SELECT E'a' -- c\n  -- d\n'\\' /*' /*route='x'*/",
     kRouteX},
    {"StandardStringContinuation", "SELECT 'a'\n'\\' /*route='x'*/", kRouteX},
    {"DollarQuoteHidesCommentOpener", "SELECT $$ /* $$ /*route='x'*/", kRouteX},
    {"DollarQuoteHidesQuote", "SELECT $$' $$ /*route='x'*/", kRouteX},
    {"TaggedDollarQuote", "SELECT $fn$ $$ /*' $fn$ /*route='x'*/", kRouteX},
    {"DollarQuoteTagPrefixDoesNotClose", "SELECT $a$ $ab$ $xa$a$ /*route='x'*/", kRouteX},
    {"DollarQuoteHidesTag", "SELECT $a$ $b$ /*route='x'*/", {}},
    {"DollarInsideIdentifierIsNotAQuote", "SELECT col$$ /*route='x'*/", kRouteX},
    {"Parameter", "SELECT $1 /*route='x'*/", kRouteX},
    {"QuotedIdentifierHidesCommentOpener", "SELECT \"/*\" /*route='x'*/", kRouteX},
    {"QuotedIdentifierHidesQuote", "SELECT \"'\" /*route='x'*/", kRouteX},
    {"QuotedIdentifierDoubledQuote", "SELECT \"a\"\"/*\" /*route='x'*/", kRouteX},

    // Which comment is the tag comment.
    {"CommentInTheMiddle", "SELECT 1 /*route='x'*/ FROM t", {}},
    {"CommentAtTheStart", "/*route='x'*/ SELECT 1", {}},
    {"TwoTrailingCommentsLastWins", "SELECT 1 /*route='a'*/ /*route='b'*/", {{"route", "b"}}},
    {"LastCommentIsNotATagComment", "SELECT 1 /*route='a'*/ /* plain comment */", {}},
    {"TrailingCloserIsNotAComment", "SELECT 1 /*route='x'*/ */", {}},
    {"NestedCommentBeforeTag", "SELECT /* a /* b */ c */ 1 /*route='x'*/", kRouteX},
    {"NestedCommentSwallowsTag", "SELECT 1 /* a /* b */ /*route='x'*/", {}},
    {"NestedCommentInsideTagComment", "SELECT 1 /*route='x', /* note */ tier='y'*/", kRouteX},
    {"LineCommentHidesCommentOpener", "SELECT 1 -- /*\n/*route='x'*/", kRouteX},
    {"CarriageReturnEndsLineComment", "SELECT 1 -- /*\r/*route='x'*/", kRouteX},
    {"TagInsideLineComment", "SELECT 1 -- /*route='x'*/", {}},
    {"TagInsideLineCommentWithNewline", "SELECT 1 -- /*route='x'*/\n", {}},

    // Unterminated literals and comments.
    {"UnterminatedComment", "SELECT 1 /* /*route='x'*/", {}},
    {"UnterminatedString", "SELECT 'abc /*route='x'*/", {}},
    {"UnterminatedEscapeString", R"(SELECT E'\' /*route='x'*/)", {}},
    {"UnterminatedDollarQuote", "SELECT $$ /*route='x'*/", {}},
    {"UnterminatedQuotedIdentifier", "SELECT \" /*route='x'*/", {}},

    // Malformed pairs are skipped, the good ones kept.
    {"MissingOpeningQuote", "SELECT 1 /*a='1',b=2,c='3'*/", {{"a", "1"}, {"c", "3"}}},
    {"MissingClosingQuoteAtEnd", "SELECT 1 /*a='1',b='2*/", {{"a", "1"}}},
    {"MissingEquals", "SELECT 1 /*a='1',b'2',c='3'*/", {{"a", "1"}, {"c", "3"}}},
    {"BareWord", "SELECT 1 /*a='1',junk,c='3'*/", {{"a", "1"}, {"c", "3"}}},
    {"ResyncSkipsCommasInQuotes", "SELECT 1 /*a=b'c,k=',d='4'*/", {{"d", "4"}}},
    {"MissingComma", "SELECT 1 /*a='1' b='2',c='3'*/", {{"c", "3"}}},
    {"BadPercentEscape", "SELECT 1 /*a='1',b='%G1',c='3'*/", {{"a", "1"}, {"c", "3"}}},
    {"TruncatedPercentEscape", "SELECT 1 /*a='1',b='%4',c='3'*/", {{"a", "1"}, {"c", "3"}}},
    {"LonePercent", "SELECT 1 /*a='1',b='%',c='3'*/", {{"a", "1"}, {"c", "3"}}},
    {"BadPercentEscapeInKey", "SELECT 1 /*a='1',b%zz='2',c='3'*/", {{"a", "1"}, {"c", "3"}}},
    {"EncodedNulIsRejected", "SELECT 1 /*a='x%00y',c='3'*/", {{"c", "3"}}},
    {"EmptyKey", "SELECT 1 /*a='1',='2',c='3'*/", {{"a", "1"}, {"c", "3"}}},
    {"EmptyPair", "SELECT 1 /*a='1',,c='3'*/", {{"a", "1"}, {"c", "3"}}},
    {"QuotedKey", "SELECT 1 /*'k'='v',c='3'*/", {{"c", "3"}}},
    {"ValueQuoteNeverCloses", "SELECT 1 /*a=x,b='2*/", {}},
    {"PlainTextComment", "SELECT 1 /* just a note */", {}},

    // Duplicates.
    {"DuplicateKeyFirstWins", "SELECT 1 /*a='1',a='2'*/", {{"a", "1"}}},
    {"MalformedFirstOccurrenceDoesNotCount", "SELECT 1 /*a='%zz',a='2'*/", {{"a", "2"}}},

    // Degenerate inputs.
    {"Empty", "", {}},
    {"OnlySemicolons", " ; ;\n", {}},
    {"OnlyCloser", "*/", {}},
    {"SlashStarSlash", "/*/", {}},
    {"EmptyComment", "SELECT 1 /**/", {}},
    {"EmptyCommentWithSemicolon", "/**/;", {}},
    {"BlankComment", "SELECT 1 /* \n */", {}},
};

class ParseTest : public ::testing::TestWithParam<ParseCase> {};

TEST_P(ParseTest, YieldsExpectedTags) {
  const ParseCase& c = GetParam();
  EXPECT_EQ(ParseSqlCommenterTags(c.sql), c.expected) << "sql: " << c.sql;
}

INSTANTIATE_TEST_SUITE_P(SqlCommenter, ParseTest, ::testing::ValuesIn(kParseCases),
                         [](const ::testing::TestParamInfo<ParseCase>& info) {
                           return std::string(info.param.name);
                         });

std::string TagComment(const std::string& key, const std::string& value) {
  return "SELECT 1 /*" + key + "='" + value + "'*/";
}

TEST(SqlCommenter, KeyLimitIsCountedAfterDecoding) {
  const std::string key64(kMaxTagKeyBytes, 'k');
  EXPECT_EQ(ParseSqlCommenterTags(TagComment(key64, "v")), (Tags{{key64, "v"}}));
  EXPECT_TRUE(ParseSqlCommenterTags(TagComment(key64 + "k", "v")).empty());

  std::string encoded_key64;
  for (std::size_t i = 0; i < kMaxTagKeyBytes; ++i) encoded_key64 += "%41";
  EXPECT_EQ(ParseSqlCommenterTags(TagComment(encoded_key64, "v")),
            (Tags{{std::string(kMaxTagKeyBytes, 'A'), "v"}}));
  EXPECT_TRUE(ParseSqlCommenterTags(TagComment(encoded_key64 + "%41", "v")).empty());
}

TEST(SqlCommenter, ValueLimitIsCountedAfterDecoding) {
  const std::string value1024(kMaxTagValueBytes, 'v');
  EXPECT_EQ(ParseSqlCommenterTags(TagComment("k", value1024)), (Tags{{"k", value1024}}));
  EXPECT_TRUE(ParseSqlCommenterTags(TagComment("k", value1024 + "v")).empty());

  std::string encoded;
  std::string escaped;
  for (std::size_t i = 0; i < kMaxTagValueBytes; ++i) {
    encoded += "%2F";
    escaped += "\\'";
  }
  EXPECT_EQ(ParseSqlCommenterTags(TagComment("k", encoded)),
            (Tags{{"k", std::string(kMaxTagValueBytes, '/')}}));
  EXPECT_TRUE(ParseSqlCommenterTags(TagComment("k", encoded + "%2F")).empty());
  EXPECT_EQ(ParseSqlCommenterTags(TagComment("k", escaped)),
            (Tags{{"k", std::string(kMaxTagValueBytes, '\'')}}));
  EXPECT_TRUE(ParseSqlCommenterTags(TagComment("k", escaped + "\\'")).empty());
}

TEST(SqlCommenter, OverLimitPairIsSkippedAndOthersKept) {
  const std::string sql =
      "SELECT 1 /*a='1',b='" + std::string(kMaxTagValueBytes + 1, 'x') + "',c='3'*/";
  EXPECT_EQ(ParseSqlCommenterTags(sql), (Tags{{"a", "1"}, {"c", "3"}}));
}

std::string ManyTags(int count) {
  std::string sql = "SELECT 1 /*";
  for (int i = 0; i < count; ++i) {
    if (i > 0) sql += ",";
    sql += "k" + std::to_string(i) + "='" + std::to_string(i) + "'";
  }
  return sql + "*/";
}

TEST(SqlCommenter, AtMost32Tags) {
  EXPECT_EQ(ParseSqlCommenterTags(ManyTags(32)).size(), kMaxTags);
  const Tags tags = ParseSqlCommenterTags(ManyTags(33));
  ASSERT_EQ(tags.size(), kMaxTags);
  EXPECT_EQ(tags.front(), (Tag{"k0", "0"}));
  EXPECT_EQ(tags.back(), (Tag{"k31", "31"}));
}

TEST(SqlCommenter, SkippedPairsDoNotCountTowardTheTagLimit) {
  // The later k0 is a duplicate; k1 to k31 then fill the 32 slots.
  const std::string sql = "SELECT 1 /*bad,x='%zz',k0='dup'," + ManyTags(33).substr(11);
  const Tags tags = ParseSqlCommenterTags(sql);
  ASSERT_EQ(tags.size(), kMaxTags);
  EXPECT_EQ(tags[0], (Tag{"k0", "dup"}));
  EXPECT_EQ(tags[1], (Tag{"k1", "1"}));
  EXPECT_EQ(tags.back(), (Tag{"k31", "31"}));
}

template <std::size_t kSize>
std::string_view WithNuls(const char (&text)[kSize]) {
  return std::string_view(text, kSize - 1);
}

TEST(SqlCommenter, RawNulBytesAreSafe) {
  EXPECT_EQ(ParseSqlCommenterTags(WithNuls("SELECT 1 /*a='x\0y',b='2'*/")), (Tags{{"b", "2"}}));
  EXPECT_EQ(ParseSqlCommenterTags(WithNuls("SELECT '\0' /*b='2'*/")), (Tags{{"b", "2"}}));
  EXPECT_TRUE(ParseSqlCommenterTags(WithNuls("SELECT 1 /*b='2'*/\0")).empty());
}

TEST(SqlCommenter, BytesAreNotValidatedAsUtf8) {
  EXPECT_EQ(ParseSqlCommenterTags("SELECT \xff\xfe /*k='\xc3\xa9%FF'*/"),
            (Tags{{"k", "\xc3\xa9\xff"}}));
}

TEST(SqlCommenter, HugeInputsFinish) {
  std::string nested_openers = "SELECT 1 ";
  for (int i = 0; i < (1 << 19); ++i) nested_openers += "/*";
  nested_openers += "*/";
  EXPECT_TRUE(ParseSqlCommenterTags(nested_openers).empty());
  std::string dollars = "SELECT $" + std::string(4096, 'a') + "$";
  for (int i = 0; i < 256; ++i) dollars += "$" + std::string(4095, 'a') + "b";
  EXPECT_TRUE(ParseSqlCommenterTags(dollars + " /*k='v'*/").empty());
  const std::string long_value = TagComment("k", std::string(1 << 20, 'v'));
  EXPECT_TRUE(ParseSqlCommenterTags(long_value).empty());
}

// Checks the invariants that hold for every output.
void ExpectWellFormed(const Tags& tags, const std::string& sql) {
  ASSERT_LE(tags.size(), kMaxTags) << sql;
  for (std::size_t i = 0; i < tags.size(); ++i) {
    EXPECT_FALSE(tags[i].key.empty()) << sql;
    EXPECT_LE(tags[i].key.size(), kMaxTagKeyBytes) << sql;
    EXPECT_LE(tags[i].value.size(), kMaxTagValueBytes) << sql;
    EXPECT_EQ(tags[i].key.find('\0'), std::string::npos) << sql;
    EXPECT_EQ(tags[i].value.find('\0'), std::string::npos) << sql;
    for (std::size_t j = 0; j < i; ++j) EXPECT_NE(tags[i].key, tags[j].key) << sql;
  }
}

TEST(SqlCommenter, FuzzSqlFragmentsRespectsLimits) {
  static const std::string_view kFragments[] = {
      "SELECT ", " ",   "'",  "''",    "\"",           "$$",  "$a$", "$",  "E'",
      "e",       "\\",  "/*", "*/",    "--",           "\n",  "\r",  ",",  "=",
      "key",     "'v'", "%",  "%2F",   "%G",           ";",   "1",   "a$", "*",
      "/",       "-",   "\t", "k='v'", "route='%2Fx'", "\\'", "U&'", "x"};
  constexpr int kFragmentCount = sizeof(kFragments) / sizeof(kFragments[0]);
  std::mt19937 random(12345);
  for (int iteration = 0; iteration < 5000; ++iteration) {
    std::string sql;
    const int length = 1 + static_cast<int>(random() % 40);
    for (int i = 0; i < length; ++i) {
      const std::uint32_t pick = random() % (kFragmentCount + 2);
      if (pick < kFragmentCount) {
        sql += kFragments[pick];
      } else {
        sql += static_cast<char>(random() % 256);  // Any byte, NUL and invalid UTF-8 included.
      }
    }
    // Most inputs must reach the full scan, so give them a trailing comment.
    if (random() % 4 != 0) sql += random() % 2 == 0 ? "*/" : " /*a='1',b='2'*/";
    const Tags tags = ParseSqlCommenterTags(sql);
    ExpectWellFormed(tags, sql);
    // Trailing whitespace and semicolons never change the answer.
    EXPECT_EQ(ParseSqlCommenterTags(sql + " ;\n;"), tags) << sql;
  }
}

// The SQLCommenter serialization: percent-encode, then escape quotes and backslashes.
std::string Serialize(const std::string& text) {
  static const char kHex[] = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : text) {
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
        c == '_' || c == '.' || c == '~') {
      out += static_cast<char>(c);
    } else {
      out += '%';
      out += kHex[c >> 4];
      out += kHex[c & 15];
    }
  }
  return out;
}

TEST(SqlCommenter, FuzzRoundTripOfSerializedTags) {
  std::mt19937 random(678);
  for (int iteration = 0; iteration < 2000; ++iteration) {
    Tags expected;
    std::string sql =
        iteration % 2 == 0 ? "SELECT 'a', $$b$$ /*" : "/* lead */ UPDATE t SET x=1 /*";
    const int count = static_cast<int>(random() % (kMaxTags + 1));
    for (int i = 0; i < count; ++i) {
      Tag tag;
      tag.key = "k" + std::to_string(i);
      const int value_length = static_cast<int>(random() % 24);
      for (int j = 0; j < value_length; ++j) {
        tag.value += static_cast<char>(1 + random() % 255);  // No NUL: it is rejected.
      }
      std::string value = Serialize(tag.value);
      // Writers may also send a quote as \' instead of %27.
      for (std::size_t at = value.find("%27"); at != std::string::npos; at = value.find("%27")) {
        value.replace(at, 3, "\\'");
      }
      if (i > 0) sql += random() % 2 == 0 ? "," : " , ";
      sql += tag.key + "='" + value + "'";
      expected.push_back(std::move(tag));
    }
    sql += "*/;";
    EXPECT_EQ(ParseSqlCommenterTags(sql), expected) << sql;
  }
}

}  // namespace
}  // namespace tc
