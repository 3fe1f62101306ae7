// loftqd: turns Hugging Face checkpoints into ready-to-fine-tune LoftQ models.
#include "daemon/cli.h"

int main(int argc, char** argv) {
  return loftqd::daemon::run_cli(argc, argv);
}
