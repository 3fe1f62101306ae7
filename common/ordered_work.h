// Items 0..count-1 computed by a fixed set of workers, each with its own context (a compute
// backend), and taken by one consumer in order: the pattern that lets several tensors be
// computed at once while the writer keeps the file order. Workers take items in order and stay
// at most `window` items ahead of the consumer, which bounds the memory held in results.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <exception>
#include <functional>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <thread>
#include <vector>

namespace loftqd::common {

template <class T, class Ctx>
class OrderedWork {
 public:
  using Fn = std::function<T(size_t item, Ctx& ctx)>;

  // Starts one thread per context. `window` >= 1: item i starts only once items < i - window + 1
  // have been taken.
  OrderedWork(const std::vector<Ctx*>& contexts, size_t count, size_t window, Fn fn)
      : fn_(std::move(fn)), window_(window < 1 ? 1 : window), results_(count), errors_(count) {
    threads_.reserve(contexts.size());
    try {
      for (Ctx* c : contexts) threads_.emplace_back([this, c] { run(*c); });
    } catch (...) {  // no thread left running on a half-built object
      join();
      throw;
    }
  }
  // Stops handing out items and waits for the workers (each finishes the item it is on).
  ~OrderedWork() { join(); }
  OrderedWork(const OrderedWork&) = delete;
  OrderedWork& operator=(const OrderedWork&) = delete;

  // The result of item `i`, which must be the next one not yet taken; waits for it and rethrows
  // the exception its computation threw (after which no further item is handed out).
  T take(size_t i) {
    std::unique_lock lk(mu_);
    if (i != taken_ || i >= results_.size())
      throw std::logic_error("OrderedWork::take: items are taken in order");
    cv_.wait(lk, [&] { return results_[i].has_value() || errors_[i] != nullptr; });
    ++taken_;
    cv_.notify_all();  // a worker may be waiting for the window to move
    if (errors_[i]) {
      stop_ = true;
      std::rethrow_exception(errors_[i]);
    }
    T out = std::move(*results_[i]);
    results_[i].reset();
    return out;
  }

 private:
  void join() {
    {
      std::lock_guard g(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    for (auto& t : threads_) t.join();
  }

  void run(Ctx& ctx) {
    for (;;) {
      size_t i;
      {
        std::unique_lock lk(mu_);
        cv_.wait(lk, [&] { return stop_ || next_ >= results_.size() || next_ < taken_ + window_; });
        if (stop_ || next_ >= results_.size()) return;
        i = next_++;
      }
      std::optional<T> r;
      std::exception_ptr e;
      try {
        r.emplace(fn_(i, ctx));
      } catch (...) {
        e = std::current_exception();
      }
      {
        std::lock_guard g(mu_);
        if (e) {
          errors_[i] = e;
          stop_ = true;  // nothing after a failed item is needed
        } else {
          results_[i] = std::move(r);
        }
      }
      cv_.notify_all();
    }
  }

  Fn fn_;
  size_t window_;
  std::mutex mu_;
  std::condition_variable cv_;
  size_t next_ = 0, taken_ = 0;
  bool stop_ = false;
  std::vector<std::optional<T>> results_;
  std::vector<std::exception_ptr> errors_;
  std::vector<std::thread> threads_;
};

}  // namespace loftqd::common
