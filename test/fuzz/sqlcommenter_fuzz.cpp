// libFuzzer target: tc::ParseSqlCommenterTags on arbitrary statement text.
//
// Checks, besides ASan/UBSan: nothing is thrown; both overloads agree; every
// tag keeps the documented limits (1-64 byte key, at most 1024 byte value, no
// NUL, unique keys, at most 32 tags); text that does not end in "*/" (before
// whitespace and ';') has no tags; a statement before the text changes
// nothing; and the tags, serialized again as a SQLCommenter comment, parse
// back to the same tags.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "fuzz_check.hpp"
#include "traffic_control/sqlcommenter.hpp"

namespace {

using tc_fuzz::Check;
using tc_fuzz::Fail;

std::vector<tc::Tag> Parse(std::string_view statement) {
  std::vector<tc::Tag> tags;
  tc_fuzz::NoThrow("ParseSqlCommenterTags", [&] { tags = tc::ParseSqlCommenterTags(statement); });
  return tags;
}

std::string Describe(const std::vector<tc::Tag>& tags) {
  std::string text;
  for (const tc::Tag& tag : tags) text += "[" + tag.key + "]=[" + tag.value + "] ";
  return text;
}

// Percent-encodes every byte but [A-Za-z0-9_.~-], as the SQLCommenter
// libraries do, so that no quote, comma, '=', space or '*/' is left raw.
std::string Encode(std::string_view text) {
  static const char kHex[] = "0123456789ABCDEF";
  std::string encoded;
  for (const char c : text) {
    const unsigned char u = static_cast<unsigned char>(c);
    const bool plain = (u >= 'a' && u <= 'z') || (u >= 'A' && u <= 'Z') || (u >= '0' && u <= '9') ||
                       u == '_' || u == '.' || u == '~' || u == '-';
    if (plain) {
      encoded += c;
    } else {
      encoded += '%';
      encoded += kHex[u >> 4];
      encoded += kHex[u & 15];
    }
  }
  return encoded;
}

// The text without trailing whitespace and ';' ends in "*/".
bool EndsInComment(std::string_view text) {
  std::size_t end = text.size();
  while (end > 0 &&
         std::string_view(" \t\n\r\f\v;").find(text[end - 1]) != std::string_view::npos) {
    --end;
  }
  return end >= 2 && text.substr(end - 2, 2) == "*/";
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view statement(reinterpret_cast<const char*>(data), size);
  const std::vector<tc::Tag> tags = Parse(statement);

  // The overload the server uses clears its vector and must agree.
  std::vector<tc::Tag> reused = {{"stale", "tag"}};
  tc_fuzz::NoThrow("ParseSqlCommenterTags(vector)",
                   [&] { tc::ParseSqlCommenterTags(statement, &reused); });
  Check(reused == tags, "the two overloads disagree", Describe(tags) + "vs " + Describe(reused));

  Check(tags.size() <= tc::kMaxTags, "more than kMaxTags tags");
  for (std::size_t i = 0; i < tags.size(); ++i) {
    const tc::Tag& tag = tags[i];
    Check(!tag.key.empty(), "empty tag key");
    Check(tag.key.size() <= tc::kMaxTagKeyBytes, "tag key over kMaxTagKeyBytes", tag.key);
    Check(tag.value.size() <= tc::kMaxTagValueBytes, "tag value over kMaxTagValueBytes", tag.key);
    // The server hands keys and values on as C strings.
    Check(tag.key.find('\0') == std::string::npos, "NUL in a tag key");
    Check(tag.value.find('\0') == std::string::npos, "NUL in a tag value", tag.key);
    for (std::size_t j = 0; j < i; ++j) {
      Check(tags[j].key != tag.key, "duplicate tag key", tag.key);
    }
  }
  if (!EndsInComment(statement)) Check(tags.empty(), "tags from text that does not end in */");

  // The scanner starts the text at a token boundary, and so does a complete
  // statement before it: the tag comment is the same one.
  if (Parse("SELECT 1 " + std::string(statement)) != tags) {
    Fail("a leading \"SELECT 1 \" changed the tags", Describe(tags));
  }

  // Round trip: the same tags written by a SQLCommenter library.
  if (!tags.empty()) {
    std::string written = "SELECT 1 /*";
    for (const tc::Tag& tag : tags) {
      if (written.back() != '*') written += ',';
      written += Encode(tag.key) + "='" + Encode(tag.value) + "'";
    }
    written += "*/";
    const std::vector<tc::Tag> again = Parse(written);
    Check(again == tags, "serialized tags do not parse back",
          Describe(tags) + "vs " + Describe(again));
  }
  return 0;
}
