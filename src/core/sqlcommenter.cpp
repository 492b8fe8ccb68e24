#include "traffic_control/sqlcommenter.hpp"

#include <cstddef>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace tc {
namespace {

// Returned by the scanners below for an unterminated literal or comment.
constexpr std::size_t kNotFound = std::string_view::npos;

bool IsSpace(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

bool IsNewline(char c) { return c == '\n' || c == '\r'; }

bool IsDigit(char c) { return c >= '0' && c <= '9'; }

// PostgreSQL's ident_start: [A-Za-z\200-\377_]. Also dolq_start.
bool IsIdentStart(char c) {
  const unsigned char u = static_cast<unsigned char>(c);
  return (u >= 'a' && u <= 'z') || (u >= 'A' && u <= 'Z') || u == '_' || u >= 0x80;
}

// PostgreSQL's dolq_cont: an identifier character other than '$'.
bool IsDollarTagChar(char c) { return IsIdentStart(c) || IsDigit(c); }

// PostgreSQL's ident_cont: identifiers may contain '$', so "a$b$" is one identifier.
bool IsIdentCont(char c) { return IsDollarTagChar(c) || c == '$'; }

bool StartsWith(std::string_view text, std::size_t pos, char first, char second) {
  return pos + 1 < text.size() && text[pos] == first && text[pos + 1] == second;
}

// --- SQL lexical scanning: every function takes the position just after an opening token
// and returns the position just after the closing one, or kNotFound if unterminated.

// '...' and "..." (also U&'...', B'...', X'...', N'...'): a doubled quote can be treated as
// the end of one literal followed by the start of the next, which ends at the same place.
std::size_t SkipQuoted(std::string_view text, std::size_t pos, char quote) {
  const std::size_t close = text.find(quote, pos);
  return close == kNotFound ? kNotFound : close + 1;
}

std::size_t SkipLineComment(std::string_view text, std::size_t pos) {
  while (pos < text.size() && !IsNewline(text[pos])) ++pos;
  return pos;
}

// PostgreSQL block comments nest.
std::size_t SkipBlockComment(std::string_view text, std::size_t pos) {
  std::size_t depth = 1;
  while (pos < text.size()) {
    if (StartsWith(text, pos, '/', '*')) {
      ++depth;
      pos += 2;
    } else if (StartsWith(text, pos, '*', '/')) {
      pos += 2;
      if (--depth == 0) return pos;
    } else {
      ++pos;
    }
  }
  return kNotFound;
}

// PostgreSQL's quotecontinue: two string segments separated by whitespace that contains a
// newline (and possibly -- comments) form one literal. It matters only for E'' strings, whose
// continuation segments keep backslash escapes. Returns the position after the second
// segment's opening quote, or kNotFound when no continuation follows.
std::size_t MatchQuoteContinuation(std::string_view text, std::size_t pos) {
  const std::size_t size = text.size();
  while (pos < size) {
    if (text[pos] == ' ' || text[pos] == '\t' || text[pos] == '\f') {
      ++pos;
    } else if (StartsWith(text, pos, '-', '-')) {
      pos = SkipLineComment(text, pos + 2);
    } else {
      break;
    }
  }
  if (pos >= size || !IsNewline(text[pos])) return kNotFound;
  ++pos;
  while (pos < size) {
    if (IsSpace(text[pos])) {
      ++pos;
    } else if (StartsWith(text, pos, '-', '-')) {
      pos = SkipLineComment(text, pos + 2);
    } else {
      break;
    }
  }
  return pos < size && text[pos] == '\'' ? pos + 1 : kNotFound;
}

// E'...': backslash escapes and '' doubling.
std::size_t SkipEscapeString(std::string_view text, std::size_t pos) {
  const std::size_t size = text.size();
  while (true) {
    while (pos < size) {
      if (text[pos] == '\\') {
        pos += 2;
      } else if (text[pos] == '\'') {
        if (pos + 1 < size && text[pos + 1] == '\'') {
          pos += 2;
        } else {
          break;
        }
      } else {
        ++pos;
      }
    }
    if (pos >= size) return kNotFound;
    ++pos;  // The closing quote.
    const std::size_t continuation = MatchQuoteContinuation(text, pos);
    if (continuation == kNotFound) return pos;
    pos = continuation;
  }
}

// Matches a dollar-quote delimiter "$" [tag] "$" at `pos` (which holds '$'); returns the
// position after it, or kNotFound.
std::size_t MatchDollarDelimiter(std::string_view text, std::size_t pos) {
  std::size_t end = pos + 1;
  if (end < text.size() && IsIdentStart(text[end])) {
    ++end;
    while (end < text.size() && IsDollarTagChar(text[end])) ++end;
  }
  return end < text.size() && text[end] == '$' ? end + 1 : kNotFound;
}

// Finds `delimiter` the way PostgreSQL's lexer does. Every '$' of the body starts a token
// there, so a plain search would agree; this form stays linear for long delimiters.
std::size_t SkipDollarQuoted(std::string_view text, std::size_t pos, std::string_view delimiter) {
  while (true) {
    pos = text.find('$', pos);
    if (pos == kNotFound) return kNotFound;
    std::size_t end = pos + 1;
    while (end < text.size() && IsDollarTagChar(text[end])) ++end;
    if (end < text.size() && text[end] == '$' && text.substr(pos, end + 1 - pos) == delimiter) {
      return end + 1;
    }
    pos = end;  // A '$' at `end` may open the real delimiter.
  }
}

// Scans the statement once. When its last token is a top-level block comment, stores that
// comment's body (between the outer "/*" and "*/") and returns true.
bool FindTrailingCommentBody(std::string_view text, std::string_view* body) {
  const std::size_t size = text.size();
  std::size_t comment_begin = kNotFound;
  std::size_t comment_end = kNotFound;
  std::size_t pos = 0;
  while (pos < size) {
    const char c = text[pos];
    if (c == '\'' || c == '"') {
      pos = SkipQuoted(text, pos + 1, c);
    } else if (StartsWith(text, pos, '-', '-')) {
      pos = SkipLineComment(text, pos + 2);
    } else if (StartsWith(text, pos, '/', '*')) {
      comment_begin = pos;
      pos = comment_end = SkipBlockComment(text, pos + 2);
    } else if (c == '$') {
      const std::size_t delimiter_end = MatchDollarDelimiter(text, pos);
      pos = delimiter_end == kNotFound
                ? pos + 1  // A parameter such as $1, or a stray '$'.
                : SkipDollarQuoted(text, delimiter_end, text.substr(pos, delimiter_end - pos));
    } else if ((c == 'e' || c == 'E') && pos + 1 < size && text[pos + 1] == '\'') {
      pos = SkipEscapeString(text, pos + 2);
    } else if (IsIdentStart(c)) {
      // Consume the whole identifier: an 'e' or '$' inside one starts nothing.
      ++pos;
      while (pos < size && IsIdentCont(text[pos])) ++pos;
    } else {
      ++pos;
    }
    if (pos == kNotFound) return false;
  }
  if (comment_end != size) return false;
  *body = text.substr(comment_begin + 2, comment_end - 2 - (comment_begin + 2));
  return true;
}

// --- Tag comment body.

bool IsKeyChar(char c) { return !IsSpace(c) && c != '=' && c != ',' && c != '\''; }

std::size_t SkipSpaces(std::string_view text, std::size_t pos) {
  while (pos < text.size() && IsSpace(text[pos])) ++pos;
  return pos;
}

// `pos` is just after a value's opening quote. A backslash escapes the next byte.
std::size_t SkipQuotedValue(std::string_view body, std::size_t pos) {
  while (pos < body.size()) {
    if (body[pos] == '\\') {
      pos += 2;
    } else if (body[pos] == '\'') {
      return pos + 1;
    } else {
      ++pos;
    }
  }
  return kNotFound;
}

// After a malformed pair: the position after the next comma outside a quoted value.
std::size_t FindNextPair(std::string_view body, std::size_t pos) {
  while (pos < body.size()) {
    if (body[pos] == ',') return pos + 1;
    pos = body[pos] == '\'' ? SkipQuotedValue(body, pos + 1) : pos + 1;
  }
  return kNotFound;
}

int HexDigitValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// Percent-decodes `text` into `out`. Fails on a malformed escape, on a NUL byte (metadata
// become C strings on the server side) and when the result exceeds `max_bytes`.
bool PercentDecode(std::string_view text, std::size_t max_bytes, std::string* out) {
  out->clear();
  for (std::size_t pos = 0; pos < text.size(); ++pos) {
    char c = text[pos];
    if (c == '%') {
      if (pos + 2 >= text.size()) return false;  // Fewer than two characters follow.
      const int high = HexDigitValue(text[pos + 1]);
      const int low = HexDigitValue(text[pos + 2]);
      if (high < 0 || low < 0) return false;
      c = static_cast<char>(high * 16 + low);
      pos += 2;
    }
    if (c == '\0' || out->size() == max_bytes) return false;
    out->push_back(c);
  }
  return true;
}

// A quoted value: removes backslash escapes, then percent-decodes (the SQLCommenter
// serializers percent-encode first, then escape quotes).
bool DecodeValue(std::string_view quoted, std::string* unescaped, std::string* out) {
  unescaped->clear();
  for (std::size_t pos = 0; pos < quoted.size(); ++pos) {
    if (quoted[pos] == '\\') ++pos;  // Never the last byte: SkipQuotedValue checked.
    // Each decoded byte takes at most three encoded ones: stop early on a huge value.
    if (unescaped->size() == 3 * kMaxTagValueBytes) return false;
    unescaped->push_back(quoted[pos]);
  }
  return PercentDecode(*unescaped, kMaxTagValueBytes, out);
}

bool HasKey(const std::vector<Tag>& tags, const std::string& key) {
  for (const Tag& tag : tags) {
    if (tag.key == key) return true;
  }
  return false;
}

void ParseCommentBody(std::string_view body, std::vector<Tag>* tags_out) {
  std::vector<Tag>& tags = *tags_out;
  std::string scratch;
  std::size_t pos = 0;
  while (pos < body.size() && tags.size() < kMaxTags) {
    pos = SkipSpaces(body, pos);
    if (pos >= body.size()) break;
    const std::size_t key_begin = pos;
    while (pos < body.size() && IsKeyChar(body[pos])) ++pos;
    const std::string_view raw_key = body.substr(key_begin, pos - key_begin);
    if (!raw_key.empty()) pos = SkipSpaces(body, pos);
    if (raw_key.empty() || pos >= body.size() || body[pos] != '=') {
      pos = FindNextPair(body, pos);
      continue;
    }
    pos = SkipSpaces(body, pos + 1);
    if (pos >= body.size() || body[pos] != '\'') {
      pos = FindNextPair(body, pos);
      continue;
    }
    const std::size_t value_begin = pos + 1;
    pos = SkipQuotedValue(body, value_begin);
    if (pos == kNotFound) break;  // The rest of the body is inside the quote.
    const std::string_view raw_value = body.substr(value_begin, pos - 1 - value_begin);
    pos = SkipSpaces(body, pos);
    if (pos < body.size()) {
      if (body[pos] != ',') {
        pos = FindNextPair(body, pos);
        continue;
      }
      ++pos;
    }
    // The pair is well delimited: an invalid key or value skips only this pair.
    Tag tag;
    if (!PercentDecode(raw_key, kMaxTagKeyBytes, &tag.key) ||
        !DecodeValue(raw_value, &scratch, &tag.value) || HasKey(tags, tag.key)) {
      continue;
    }
    tags.push_back(std::move(tag));
  }
}

}  // namespace

std::vector<Tag> ParseSqlCommenterTags(std::string_view statement) {
  std::vector<Tag> tags;
  ParseSqlCommenterTags(statement, &tags);
  return tags;
}

void ParseSqlCommenterTags(std::string_view statement, std::vector<Tag>* tags) {
  tags->clear();
  std::size_t end = statement.size();
  while (end > 0 && (IsSpace(statement[end - 1]) || statement[end - 1] == ';')) --end;
  // The common case, a statement without a trailing comment, costs only this check.
  if (end < 4 || statement[end - 2] != '*' || statement[end - 1] != '/') return;
  std::string_view body;
  if (!FindTrailingCommentBody(statement.substr(0, end), &body)) return;
  ParseCommentBody(body, tags);
}

}  // namespace tc
