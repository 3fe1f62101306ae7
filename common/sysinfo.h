// What the process can learn about the machine's memory: what is free for it now, and how much
// it has used at most.
#pragma once

#include <cstdint>
#include <string>

namespace loftqd::common {

// Memory this process can still use, in bytes: the kernel's MemAvailable, or less when the
// process's cgroup (v2; a systemd MemoryMax=, a container limit) leaves less below its
// memory.max. 0 when nothing can be read.
uint64_t available_memory_bytes();

// The peak resident set size of this process so far, in bytes (getrusage ru_maxrss).
uint64_t peak_rss_bytes();

// "1.23 GB"-style text for a byte count (decimal units, as the logs print sizes).
std::string human_bytes(uint64_t bytes);

}  // namespace loftqd::common
