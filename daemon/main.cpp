// loftqd: turns Hugging Face checkpoints into ready-to-fine-tune LoftQ models.
#include "daemon/blas_kernels.h"
#include "daemon/cli.h"

int main(int argc, char** argv) {
  loftqd::daemon::ensure_blas_kernels(argv);  // BLAS kernels: may re-exec once, before anything
  return loftqd::daemon::run_cli(argc, argv);
}
