// Stand-ins for what the server gives the core's shared tables, for the
// GoogleTest suites that need nothing more of them.
#pragma once
#include <mutex>

#include "traffic_control/shared_state.hpp"

namespace tc {

// A table lock that is one mutex, shared and exclusive alike.
class MutexLock final : public TableLock {
 public:
  void LockExclusive() override { mutex_.lock(); }
  void LockShared() override { mutex_.lock(); }
  void Unlock() override { mutex_.unlock(); }

 private:
  std::mutex mutex_;
};

}  // namespace tc
