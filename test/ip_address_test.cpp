#include "traffic_control/ip_address.hpp"

#include <gtest/gtest.h>

namespace tc {
namespace {

TEST(IpAddress, ParsesV4AddressAsFullPrefix) {
  IpPrefix p;
  ASSERT_TRUE(ParseIpPrefix("10.1.2.3", &p));
  EXPECT_FALSE(p.is_v6);
  EXPECT_EQ(p.prefix_len, 32);
  EXPECT_EQ(p.bytes[0], 10);
  EXPECT_EQ(p.bytes[3], 3);
}

TEST(IpAddress, ParsesCidrAndRejectsHostBits) {
  IpPrefix p;
  ASSERT_TRUE(ParseIpPrefix("10.1.0.0/16", &p));
  EXPECT_EQ(p.prefix_len, 16);
  EXPECT_FALSE(ParseIpPrefix("10.1.2.3/16", &p));
  EXPECT_FALSE(ParseIpPrefix("10.1.0.0/33", &p));
  EXPECT_FALSE(ParseIpPrefix("10.1.0.0/", &p));
  EXPECT_FALSE(ParseIpPrefix("10.1.0.0/1x", &p));
  EXPECT_FALSE(ParseIpPrefix("office", &p));
  EXPECT_FALSE(ParseIpPrefix("", &p));
}

TEST(IpAddress, ParsesV6AndMappedV4) {
  IpPrefix p;
  ASSERT_TRUE(ParseIpPrefix("fe80::/10", &p));
  EXPECT_TRUE(p.is_v6);
  EXPECT_EQ(p.prefix_len, 10);
  ASSERT_TRUE(ParseIpPrefix("::ffff:10.1.2.3", &p));
  EXPECT_FALSE(p.is_v6);
  EXPECT_EQ(p.bytes[0], 10);
  ASSERT_TRUE(ParseIpPrefix("::/0", &p));
  EXPECT_EQ(p.prefix_len, 0);
}

TEST(IpAddress, ContainsByPrefix) {
  IpPrefix net, inside, outside, v6;
  ASSERT_TRUE(ParseIpPrefix("10.1.0.0/16", &net));
  ASSERT_TRUE(ParseIpPrefix("10.1.200.7", &inside));
  ASSERT_TRUE(ParseIpPrefix("10.2.0.1", &outside));
  ASSERT_TRUE(ParseIpPrefix("2001:db8::1", &v6));
  EXPECT_TRUE(PrefixContains(net, inside));
  EXPECT_FALSE(PrefixContains(net, outside));
  EXPECT_FALSE(PrefixContains(net, v6));
  IpPrefix v6net;
  ASSERT_TRUE(ParseIpPrefix("2001:db8::/32", &v6net));
  EXPECT_TRUE(PrefixContains(v6net, v6));
}

}  // namespace
}  // namespace tc
