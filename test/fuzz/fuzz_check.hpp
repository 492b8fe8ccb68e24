// Shared by the libFuzzer targets of test/fuzz: how an invariant fails, and
// the checks more than one target makes.
#pragma once
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <new>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

namespace tc_fuzz {

// A broken invariant is a finding: abort() makes libFuzzer save the input as
// a crash file and stop the run.
[[noreturn]] inline void Fail(std::string_view what, std::string_view detail = {}) {
  std::fprintf(stderr, "INVARIANT VIOLATED: %.*s\n", static_cast<int>(what.size()), what.data());
  if (!detail.empty()) {
    std::fprintf(stderr, "  %.*s\n", static_cast<int>(detail.size()), detail.data());
  }
  std::abort();
}

inline void Check(bool holds, std::string_view what, std::string_view detail = {}) {
  if (!holds) Fail(what, detail);
}

// The core promises that its parsers throw nothing but std::bad_alloc (and
// the C API nothing at all), so any other exception that reaches a target is
// a finding. Named here, rather than left to std::terminate, so that the
// report says which call threw and what.
template <typename Body>
void NoThrow(std::string_view call, Body&& body) {
  try {
    body();
  } catch (const std::bad_alloc&) {
    throw;  // libFuzzer's -rss_limit_mb / -malloc_limit_mb report these
  } catch (const std::exception& e) {
    Fail(std::string(call) + " threw", e.what());
  } catch (...) {
    Fail(std::string(call) + " threw a non-std exception");
  }
}

// The messages with which the core's exception guards replace an exception:
// config.cpp's GuardedParse ("budgets: internal error: ...") and capi.cpp's
// Guarded ("traffic_control: internal error: ..."). They keep the exception
// from PostgreSQL but hide a bug. Only the start counts: other messages may
// quote input that says "internal error".
inline bool IsInternalError(std::string_view message) {
  for (const std::string_view prefix :
       {"budgets: internal error", "rules: internal error", "traffic_control: internal error"}) {
    if (message.substr(0, prefix.size()) == prefix) return true;
  }
  return false;
}

// Well-formed UTF-8: what every message the core hands to PostgreSQL must
// be. nlohmann's serializer validates strictly (no overlong forms, surrogates
// or code points past U+10FFFF), and is not the code under test.
inline bool IsValidUtf8(std::string_view text) {
  try {
    static_cast<void>(nlohmann::json(std::string(text)).dump());
    return true;
  } catch (const nlohmann::json::type_error&) {
    return false;
  }
}

}  // namespace tc_fuzz
