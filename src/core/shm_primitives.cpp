#include "traffic_control/shm_primitives.hpp"

#include <exception>
#include <random>
#include <stdexcept>
#include <string>

namespace tc {

std::uint64_t RandomSeed() {
  try {
    std::random_device random;
    return (static_cast<std::uint64_t>(random()) << 32) ^ random();
  } catch (const std::exception&) {
    return 0x9e3779b97f4a7c15ULL;
  }
}

void CheckTableMemory(const void* memory, std::size_t size, std::size_t required_bytes,
                      std::size_t alignment, const char* table) {
  if (memory == nullptr || size < required_bytes) {
    throw std::invalid_argument(std::string(table) +
                                " memory is smaller than RequiredBytes(capacity)");
  }
  if (reinterpret_cast<std::uintptr_t>(memory) % alignment != 0) {
    throw std::invalid_argument(std::string(table) + " memory is not " + std::to_string(alignment) +
                                "-byte aligned");
  }
}

}  // namespace tc
