#include "traffic_control/cpu_limit.hpp"

#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

namespace tc {
namespace {

namespace fs = std::filesystem;

// A fake /sys/fs/cgroup in a temporary directory.
class CgroupTree : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = (fs::temp_directory_path() / "tc_cgroup.XXXXXX").string();
    ASSERT_NE(mkdtemp(pattern.data()), nullptr);
    root_ = pattern;
  }
  void TearDown() override { fs::remove_all(root_); }

  void Write(const std::string& relative, const std::string& text) {
    const fs::path path = fs::path(root_) / relative;
    fs::create_directories(path.parent_path());
    std::ofstream(path) << text;
  }

  std::string root_;
};

TEST_F(CgroupTree, V2QuotaAtTheRootIsQuotaOverPeriod) {
  Write("cpu.max", "150000 100000\n");
  EXPECT_DOUBLE_EQ(CgroupCpuQuota("0::/\n", root_).value_or(-1), 1.5);
}

TEST_F(CgroupTree, V2MaxMeansNoQuota) {
  Write("cpu.max", "max 100000\n");
  EXPECT_FALSE(CgroupCpuQuota("0::/\n", root_).has_value());
}

TEST_F(CgroupTree, V2TheSmallestQuotaOnThePathToTheRootHolds) {
  Write("a/b/cpu.max", "max 100000\n");
  Write("a/cpu.max", "50000 100000\n");
  Write("cpu.max", "300000 100000\n");
  EXPECT_DOUBLE_EQ(CgroupCpuQuota("0::/a/b\n", root_).value_or(-1), 0.5);
}

TEST_F(CgroupTree, V2BesideV1ControllersIsMountedAtUnified) {
  Write("unified/svc/cpu.max", "250000 100000\n");
  EXPECT_DOUBLE_EQ(CgroupCpuQuota("1:cpu:/\n0::/svc\n", root_).value_or(-1), 2.5);
}

TEST_F(CgroupTree, V1CfsQuotaInTheCpuHierarchy) {
  Write("cpu,cpuacct/x/cpu.cfs_quota_us", "200000\n");
  Write("cpu,cpuacct/x/cpu.cfs_period_us", "100000\n");
  EXPECT_DOUBLE_EQ(CgroupCpuQuota("4:memory:/x\n3:cpu,cpuacct:/x\n", root_).value_or(-1), 2.0);
}

TEST_F(CgroupTree, V1UnlimitedQuotaIsNone) {
  Write("cpu/cpu.cfs_quota_us", "-1\n");
  Write("cpu/cpu.cfs_period_us", "100000\n");
  EXPECT_FALSE(CgroupCpuQuota("1:cpu:/\n", root_).has_value());
}

TEST_F(CgroupTree, V1MountedAsCpuAloneIsFoundToo) {
  Write("cpu/job/cpu.cfs_quota_us", "75000");
  Write("cpu/job/cpu.cfs_period_us", "100000");
  EXPECT_DOUBLE_EQ(CgroupCpuQuota("2:cpuacct,cpu:/job\n", root_).value_or(-1), 0.75);
}

TEST_F(CgroupTree, OtherControllersDoNotCount) {
  Write("memory/x/cpu.cfs_quota_us", "10000");
  Write("memory/x/cpu.cfs_period_us", "100000");
  EXPECT_FALSE(CgroupCpuQuota("4:memory:/x\n", root_).has_value());
}

TEST_F(CgroupTree, GarbageAndMissingFilesMeanNone) {
  Write("cpu.max", "lots 100000\n");
  Write("cpu/cpu.cfs_quota_us", "12abc");
  Write("cpu/cpu.cfs_period_us", "100000");
  EXPECT_FALSE(CgroupCpuQuota("0::/\n1:cpu:/\nnot a line\n::\n", root_).has_value());
  EXPECT_FALSE(CgroupCpuQuota("", root_).has_value());
  EXPECT_FALSE(CgroupCpuQuota("0::/nowhere\n", root_ + "/missing").has_value());
}

TEST_F(CgroupTree, TheSmallestOfBothHierarchiesHolds) {
  Write("cpu/cpu.cfs_quota_us", "300000");
  Write("cpu/cpu.cfs_period_us", "100000");
  Write("unified/cpu.max", "120000 100000");
  EXPECT_DOUBLE_EQ(CgroupCpuQuota("1:cpu:/\n0::/\n", root_).value_or(-1), 1.2);
}

}  // namespace
}  // namespace tc
