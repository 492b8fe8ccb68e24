// IPv4/IPv6 addresses and CIDR prefixes, for remote_address rules.
#pragma once
#include <array>
#include <cstdint>
#include <string_view>

#include "traffic_control/core_header_guard.hpp"

namespace tc {

struct IpPrefix {
  bool is_v6 = false;
  std::array<std::uint8_t, 16> bytes{};  // v4 uses the first 4 bytes; bits past the prefix are zero
  int prefix_len = 0;                    // 0..32 (v4) or 0..128 (v6)
  bool operator==(const IpPrefix& o) const {
    return is_v6 == o.is_v6 && prefix_len == o.prefix_len && bytes == o.bytes;
  }
};

// Parses "10.1.0.0/16", "10.1.2.3" (= /32), "::1", "fe80::/10". An IPv4-mapped
// IPv6 address (::ffff:10.1.2.3) is parsed as the IPv4 address. Returns false
// on anything else, including host bits set past the prefix ("10.1.2.3/16").
bool ParseIpPrefix(std::string_view text, IpPrefix* out);

// Copy of `address` keeping only its first `prefix_len` bits.
IpPrefix MaskPrefix(const IpPrefix& address, int prefix_len);

// True when `address` (a full-length prefix) lies inside `network`.
bool PrefixContains(const IpPrefix& network, const IpPrefix& address);

}  // namespace tc
