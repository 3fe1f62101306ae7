// quant/blas.h: the BLAS half (what OpenBLAS reports about itself).
#include <cblas.h>

#include <string>

#include "quant/blas.h"

namespace loftqd::quant {

BlasInfo blas_info() {
  BlasInfo b;
  const char* config = openblas_get_config();
  const char* core = openblas_get_corename();
  b.config = config ? config : "";
  b.core = core ? core : "";
  // "OpenBLAS 0.3.21 NO_LAPACKE DYNAMIC_ARCH ...": the library is the first two words.
  const size_t first = b.config.find(' ');
  const size_t second = first == std::string::npos ? first : b.config.find(' ', first + 1);
  b.library = b.config.substr(0, second);
  if (b.library.empty()) b.library = "OpenBLAS";
  b.threads = openblas_get_num_threads();
  return b;
}

}  // namespace loftqd::quant
