// Reaches the bucket table's private consistency check, for its test suites.
#pragma once
#include <string>

#include "traffic_control/bucket_table.hpp"

namespace tc {

class BucketTableTestPeer {
 public:
  static std::string ConsistencyProblem(BucketTable& table) { return table.ConsistencyProblem(); }
};

}  // namespace tc
