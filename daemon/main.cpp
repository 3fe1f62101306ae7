// loftqd: turns Hugging Face checkpoints into ready-to-fine-tune LoftQ models.
#include <cstdio>

int main(int argc, char** argv) {
  (void)argc;
  (void)argv;
  std::puts("loftqd " LOFTQD_VERSION);
  return 0;
}
