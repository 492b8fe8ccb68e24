#include "traffic_control/cpu_limit.hpp"

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <vector>

namespace tc {
namespace {

bool ReadFile(const std::string& path, std::string* text) {
  std::ifstream file(path);
  if (!file) return false;
  std::ostringstream buffer;
  buffer << file.rdbuf();
  *text = buffer.str();
  return true;
}

// A whole decimal integer (surrounding whitespace allowed).
bool ParseInteger(const std::string& text, long long* value) {
  const char* begin = text.c_str();
  char* end = nullptr;
  errno = 0;
  const long long parsed = std::strtoll(begin, &end, 10);
  if (end == begin || errno != 0) return false;
  while (*end == ' ' || *end == '\n' || *end == '\t') ++end;
  if (*end != '\0') return false;
  *value = parsed;
  return true;
}

// "200000 100000" -> 2 cores; "max 100000" or anything unreadable -> none.
std::optional<double> QuotaOfCpuMax(const std::string& text) {
  std::istringstream fields(text);
  std::string quota, period;
  if (!(fields >> quota >> period) || quota == "max") return std::nullopt;
  long long quota_us = 0, period_us = 0;
  if (!ParseInteger(quota, &quota_us) || !ParseInteger(period, &period_us)) return std::nullopt;
  if (quota_us <= 0 || period_us <= 0) return std::nullopt;
  return static_cast<double>(quota_us) / static_cast<double>(period_us);
}

std::optional<double> QuotaOfCfsFiles(const std::string& directory) {
  std::string quota_text, period_text;
  long long quota_us = 0, period_us = 0;
  if (!ReadFile(directory + "/cpu.cfs_quota_us", &quota_text) ||
      !ReadFile(directory + "/cpu.cfs_period_us", &period_text) ||
      !ParseInteger(quota_text, &quota_us) || !ParseInteger(period_text, &period_us) ||
      quota_us <= 0 || period_us <= 0) {
    return std::nullopt;
  }
  return static_cast<double>(quota_us) / static_cast<double>(period_us);
}

// The cgroup path and its ancestors up to the root: "/a/b" -> "/a/b", "/a", "".
std::vector<std::string> SelfAndAncestors(std::string path) {
  std::vector<std::string> paths;
  while (!path.empty() && path.back() == '/') path.pop_back();
  for (;;) {
    paths.push_back(path);
    const std::size_t slash = path.rfind('/');
    if (path.empty() || slash == std::string::npos) break;
    path.resize(slash);
  }
  return paths;
}

void TakeSmaller(std::optional<double>* smallest, std::optional<double> candidate) {
  if (candidate && (!*smallest || *candidate < **smallest)) *smallest = candidate;
}

}  // namespace

std::optional<double> CgroupCpuQuota(const std::string& proc_self_cgroup,
                                     const std::string& cgroup_root) {
  std::optional<double> smallest;
  std::istringstream lines(proc_self_cgroup);
  std::string line;
  while (std::getline(lines, line)) {
    // hierarchy-id:controller-list:path
    const std::size_t first = line.find(':');
    const std::size_t second = first == std::string::npos ? first : line.find(':', first + 1);
    if (second == std::string::npos) continue;
    const std::string controllers = line.substr(first + 1, second - first - 1);
    const std::string path = line.substr(second + 1);
    if (controllers.empty()) {
      // cgroup v2 (unified): the hierarchy is mounted at the root, or at
      // <root>/unified beside v1 controllers.
      for (const std::string& mount : {cgroup_root, cgroup_root + "/unified"}) {
        for (const std::string& directory : SelfAndAncestors(path)) {
          std::string text;
          if (ReadFile(mount + directory + "/cpu.max", &text)) {
            TakeSmaller(&smallest, QuotaOfCpuMax(text));
          }
        }
      }
      continue;
    }
    std::istringstream names(controllers);
    std::string name;
    bool has_cpu = false;
    while (std::getline(names, name, ',')) has_cpu = has_cpu || name == "cpu";
    if (!has_cpu) continue;
    // cgroup v1: mounted as the controller list ("cpu,cpuacct") or as "cpu".
    for (const std::string& mount : {cgroup_root + "/" + controllers, cgroup_root + "/cpu"}) {
      for (const std::string& directory : SelfAndAncestors(path)) {
        TakeSmaller(&smallest, QuotaOfCfsFiles(mount + directory));
      }
    }
  }
  return smallest;
}

}  // namespace tc
