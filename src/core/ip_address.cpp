#include "traffic_control/ip_address.hpp"

#include <arpa/inet.h>

#include <charconv>
#include <cstring>
#include <string>

namespace tc {
namespace {

bool ParseAddress(const std::string& text, IpPrefix* out) {
  IpPrefix result;
  if (inet_pton(AF_INET, text.c_str(), result.bytes.data()) == 1) {
    result.is_v6 = false;
    result.prefix_len = 32;
    *out = result;
    return true;
  }
  if (inet_pton(AF_INET6, text.c_str(), result.bytes.data()) == 1) {
    static constexpr std::uint8_t kMappedV4[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    if (std::memcmp(result.bytes.data(), kMappedV4, sizeof kMappedV4) == 0) {
      IpPrefix v4;
      std::memcpy(v4.bytes.data(), result.bytes.data() + 12, 4);
      v4.prefix_len = 32;
      *out = v4;
      return true;
    }
    result.is_v6 = true;
    result.prefix_len = 128;
    *out = result;
    return true;
  }
  return false;
}

}  // namespace

IpPrefix MaskPrefix(const IpPrefix& address, int prefix_len) {
  IpPrefix masked = address;
  const int total_bits = address.is_v6 ? 128 : 32;
  if (prefix_len < 0) prefix_len = 0;
  if (prefix_len > total_bits) prefix_len = total_bits;
  masked.prefix_len = prefix_len;
  for (int byte = 0; byte < 16; ++byte) {
    const int bits_kept = prefix_len - byte * 8;
    if (bits_kept >= 8) continue;
    if (bits_kept <= 0) {
      masked.bytes[byte] = 0;
    } else {
      masked.bytes[byte] &= static_cast<std::uint8_t>(0xff << (8 - bits_kept));
    }
  }
  return masked;
}

bool ParseIpPrefix(std::string_view text, IpPrefix* out) {
  if (text.empty() || text.size() > 64) return false;
  const std::size_t slash = text.find('/');
  IpPrefix address;
  if (!ParseAddress(std::string(text.substr(0, slash)), &address)) return false;
  if (slash == std::string_view::npos) {
    *out = address;
    return true;
  }
  const std::string_view length_text = text.substr(slash + 1);
  int prefix_len = -1;
  const auto [end, ec] =
      std::from_chars(length_text.data(), length_text.data() + length_text.size(), prefix_len);
  if (ec != std::errc() || end != length_text.data() + length_text.size() || length_text.empty())
    return false;
  if (prefix_len < 0 || prefix_len > (address.is_v6 ? 128 : 32)) return false;
  const IpPrefix masked = MaskPrefix(address, prefix_len);
  if (masked.bytes != address.bytes) return false;  // host bits set past the prefix
  *out = masked;
  return true;
}

bool PrefixContains(const IpPrefix& network, const IpPrefix& address) {
  if (network.is_v6 != address.is_v6 || address.prefix_len < network.prefix_len) return false;
  return MaskPrefix(address, network.prefix_len).bytes == network.bytes;
}

}  // namespace tc
