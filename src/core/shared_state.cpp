#include "traffic_control/shared_state.hpp"

#include <time.h>

namespace tc {

std::int64_t SteadyClock::NowMicros() {
  // CLOCK_MONOTONIC is system-wide, so values from different backends compare.
  struct timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  return static_cast<std::int64_t>(now.tv_sec) * 1000000 + now.tv_nsec / 1000;
}

}  // namespace tc
