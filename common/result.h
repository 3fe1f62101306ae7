// A value or an error, for routine outcomes that callers must handle (STYLE §5: a 404, a 429,
// a hash mismatch). `ok()` first, then `value()` or `error()`. storage and hub each define
// their Error type and alias Result<T> to BasicResult<T, Error>.
#pragma once

#include <utility>
#include <variant>

namespace loftqd::common {

template <class T, class E>
class [[nodiscard]] BasicResult {
 public:
  BasicResult(T v) : v_(std::move(v)) {}  // NOLINT: implicit on purpose
  BasicResult(E e) : v_(std::move(e)) {}  // NOLINT
  bool ok() const { return v_.index() == 0; }
  explicit operator bool() const { return ok(); }
  const T& value() const& { return std::get<0>(v_); }
  T& value() & { return std::get<0>(v_); }
  T&& value() && { return std::get<0>(std::move(v_)); }
  const E& error() const { return std::get<1>(v_); }

 private:
  std::variant<T, E> v_;
};

struct Ok {};

}  // namespace loftqd::common
