// The CPU quota a cgroup puts on this process, in cores: what
// traffic_control.server_cores = 0 means inside a container.
#pragma once
#include <optional>
#include <string>

#include "traffic_control/core_header_guard.hpp"

namespace tc {

// The smallest CPU quota (quota / period, in cores) set on the cgroup named
// for this process in `proc_self_cgroup` (the text of /proc/self/cgroup) or
// on any of its ancestors, read from the cgroup file systems under
// `cgroup_root` (/sys/fs/cgroup): cgroup v2's cpu.max ("max" = none), at
// <root> or <root>/unified, and cgroup v1's cpu.cfs_quota_us and
// cpu.cfs_period_us (-1 = none) in the hierarchy whose controllers include
// "cpu". nullopt when no quota is set or nothing can be read. Never throws
// (but std::bad_alloc).
std::optional<double> CgroupCpuQuota(const std::string& proc_self_cgroup,
                                     const std::string& cgroup_root);

}  // namespace tc
