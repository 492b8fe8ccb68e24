// SQLCommenter tag parsing: the tag comment of one statement's own text.
#pragma once
#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

#include "traffic_control/core_header_guard.hpp"

namespace tc {

constexpr std::size_t kMaxTagKeyBytes = 64;      // after URL-decoding
constexpr std::size_t kMaxTagValueBytes = 1024;  // after URL-decoding
constexpr std::size_t kMaxTags = 32;

struct Tag {
  std::string key;
  std::string value;
  bool operator==(const Tag& other) const { return key == other.key && value == other.value; }
};

// Returns the tags of the statement whose text is `statement` (only that
// statement's range, never the whole multi-statement string).
//
// The tag comment is the last /* ... */ comment of the text, followed only by
// whitespace and optional ';'. Comments inside string literals, quoted
// identifiers and dollar-quoted strings are not comments. Inside the comment:
// key='value' pairs separated by commas, optional spaces around '=' and ','.
// Keys and values are URL-decoded (%2F); a quote inside a value may be written
// \'. A malformed pair, or one over a limit, is skipped; the first occurrence
// of a key wins; at most kMaxTags tags are returned.
//
// Never throws for any input (only std::bad_alloc), and does work linear in the
// length of the text, and only when the text ends in "*/".
std::vector<Tag> ParseSqlCommenterTags(std::string_view statement);
// The same into `tags` (cleared first), which keeps its capacity: the server
// parses every statement into one vector, so short tags (keys and values that
// fit std::string's inline buffer) cost no heap allocation.
void ParseSqlCommenterTags(std::string_view statement, std::vector<Tag>* tags);

}  // namespace tc
