/*
 * cuda_stubs.c — the CPU-only build's answer to CUDA questions.
 * A CUDA build (make cuda) links csrc/cuda/ instead of this file.
 */
#include "common.h"

int mg_has_cuda(void) { return 0; }
