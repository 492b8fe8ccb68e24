// Small interfaces through which the core reaches state shared by all backends.
// In PostgreSQL they are backed by shared memory, an LWLock and the monotonic
// clock; in unit tests by heap memory, a mutex and a fake clock.
#pragma once
#include <cstddef>
#include <cstdint>

#include "traffic_control/core_header_guard.hpp"

namespace tc {

struct MemorySpan {
  void* data = nullptr;
  std::size_t size = 0;
};

class TableLock {
 public:
  virtual ~TableLock() = default;
  virtual void LockExclusive() = 0;
  virtual void LockShared() = 0;
  virtual void Unlock() = 0;
};

class Clock {
 public:
  virtual ~Clock() = default;
  // Monotonic microseconds, comparable between processes of one machine.
  virtual std::int64_t NowMicros() = 0;
};

// CLOCK_MONOTONIC.
class SteadyClock final : public Clock {
 public:
  std::int64_t NowMicros() override;
};

// RAII holder so an exception can never leave a table locked.
class ExclusiveGuard {
 public:
  explicit ExclusiveGuard(TableLock& lock) : lock_(lock) { lock_.LockExclusive(); }
  ~ExclusiveGuard() { lock_.Unlock(); }
  ExclusiveGuard(const ExclusiveGuard&) = delete;
  ExclusiveGuard& operator=(const ExclusiveGuard&) = delete;

 private:
  TableLock& lock_;
};

class SharedGuard {
 public:
  explicit SharedGuard(TableLock& lock) : lock_(lock) { lock_.LockShared(); }
  ~SharedGuard() { lock_.Unlock(); }
  SharedGuard(const SharedGuard&) = delete;
  SharedGuard& operator=(const SharedGuard&) = delete;

 private:
  TableLock& lock_;
};

}  // namespace tc
