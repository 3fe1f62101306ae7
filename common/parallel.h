// Items on a few threads, first error wins: f(0), ..., f(n - 1) on up to `workers` threads (the
// calling thread included), handed out in order. After the first error no new item starts; the
// running ones finish. Returns that first error, or Ok. Used for the hub's downloads, hashes and
// uploads and the daemon's shard feed. f returns something a BasicResult<Ok, E> is made from.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include "common/result.h"

namespace loftqd::common {

template <class E, class F>
BasicResult<Ok, E> parallel_each(size_t n, int workers, F&& f) {
  std::atomic<size_t> next{0};
  std::mutex mu;
  std::optional<E> first;
  auto work = [&] {
    for (size_t i; (i = next.fetch_add(1)) < n;) {
      {
        std::lock_guard<std::mutex> g(mu);
        if (first) return;
      }
      BasicResult<Ok, E> r = f(i);
      if (!r) {
        std::lock_guard<std::mutex> g(mu);
        if (!first) first = r.error();
        return;
      }
    }
  };
  const size_t threads = std::min<size_t>(n, static_cast<size_t>(std::max(workers, 1)));
  std::vector<std::thread> pool;
  for (size_t w = 1; w < threads; ++w) pool.emplace_back(work);
  work();
  for (auto& th : pool) th.join();
  if (first) return *first;
  return Ok{};
}

}  // namespace loftqd::common
