// common/ordered_work: results come back in order whatever finishes first, workers stay within
// the window, a failure is rethrown for its item and stops the rest, and destruction mid-way
// joins without hanging.
#include "common/ordered_work.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace loftqd::common {
namespace {

struct Worker {
  int id;
  std::vector<size_t> items;  // what this worker computed
};

TEST(OrderedWork, ResultsComeInOrderWhateverFinishesFirst) {
  Worker a{0, {}}, b{1, {}}, c{2, {}};
  const size_t n = 40;
  OrderedWork<std::string, Worker> work({&a, &b, &c}, n, 6, [](size_t i, Worker& w) {
    // Early items are slow, so later ones finish first.
    std::this_thread::sleep_for(std::chrono::milliseconds(i % 4 == 0 ? 5 : 0));
    w.items.push_back(i);
    return "item " + std::to_string(i);
  });
  for (size_t i = 0; i < n; ++i) EXPECT_EQ(work.take(i), "item " + std::to_string(i));
  EXPECT_EQ(a.items.size() + b.items.size() + c.items.size(), n);
  EXPECT_THROW(work.take(n), std::logic_error);  // past the end
}

TEST(OrderedWork, WorkersStayWithinTheWindow) {
  Worker a{0, {}}, b{1, {}};
  std::atomic<size_t> started_max{0}, taken{0};
  std::atomic<bool> violated{false};
  const size_t window = 3;
  OrderedWork<size_t, Worker> work({&a, &b}, 30, window, [&](size_t i, Worker&) {
    // `taken` lags the consumer's take() by at most one item.
    if (i >= taken.load() + 1 + window) violated = true;
    size_t m = started_max.load();
    while (i > m && !started_max.compare_exchange_weak(m, i)) {
    }
    return i;
  });
  for (size_t i = 0; i < 30; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));  // a slow consumer
    EXPECT_EQ(work.take(i), i);
    taken = i + 1;
  }
  EXPECT_FALSE(violated.load());
  EXPECT_EQ(started_max.load(), 29u);
}

TEST(OrderedWork, AFailureIsRethrownForItsItemAndStopsTheRest) {
  Worker a{0, {}}, b{1, {}};
  std::atomic<size_t> computed{0};
  OrderedWork<int, Worker> work({&a, &b}, 100, 4, [&](size_t i, Worker&) {
    ++computed;
    if (i == 5) throw std::runtime_error("tensor 5 is bad");
    return static_cast<int>(i);
  });
  for (size_t i = 0; i < 5; ++i) EXPECT_EQ(work.take(i), static_cast<int>(i));
  try {
    work.take(5);
    FAIL() << "no exception";
  } catch (const std::runtime_error& e) {
    EXPECT_STREQ(e.what(), "tensor 5 is bad");
  }
  EXPECT_LE(computed.load(), 5u + 4u);  // nothing past the window after the failure
}

TEST(OrderedWork, DestroyedMidwayJoinsTheWorkers) {
  Worker a{0, {}}, b{1, {}};
  std::atomic<size_t> computed{0};
  {
    OrderedWork<int, Worker> work({&a, &b}, 1000, 2, [&](size_t i, Worker&) {
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
      ++computed;
      return static_cast<int>(i);
    });
    EXPECT_EQ(work.take(0), 0);
  }  // must not hang or crash; nothing runs after this
  const size_t after = computed.load();
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  EXPECT_EQ(computed.load(), after);
  EXPECT_LE(after, 4u);
}

TEST(OrderedWork, NoItemsAndNoWorkers) {
  OrderedWork<int, Worker> none({}, 0, 1, [](size_t, Worker&) { return 0; });
  Worker a{0, {}};
  OrderedWork<int, Worker> empty({&a}, 0, 1, [](size_t, Worker&) { return 0; });
  EXPECT_THROW(empty.take(0), std::logic_error);
}

}  // namespace
}  // namespace loftqd::common
