# mingpt-c — build, test, benchmark.
#   make            build the C core (cffi module mingpt_c/_C) for this CPU
#   make test       run the test suite (what CI runs)
#   make sanitize   kernel tests against an AddressSanitizer + UBSan build
#   make bench      kernel benchmarks (GFLOP/s beside numpy)
#   make debug      -O0 -g build;  make portable: no -march=native
#   make cuda       also compile csrc/cuda/*.cu with nvcc and link them
#   make cuda-objs  only compile the .cu files (CI, machines without a GPU)
#   make gpu-check  on a GPU machine: build, CUDA tests, compute-sanitizer,
#                   GPU benchmark; one summary file (scripts/gpu_check.sh)
#   make clean
PYTHON ?= python3
NVCC ?= nvcc

.PHONY: all build test sanitize bench debug portable cuda cuda-objs gpu-check clean

all: build

build:
	$(PYTHON) mingpt_c/_build.py

debug:
	MINGPT_BUILD=debug $(PYTHON) mingpt_c/_build.py

portable:
	MINGPT_PORTABLE=1 $(PYTHON) mingpt_c/_build.py

test: build
	$(PYTHON) -m pytest -q tests

# Every test folder that drives the C core's kernels directly (the model
# folders' CLI runs are covered by the kernels they call).
SANITIZE_TESTS ?= tests/kernels tests/tokenizers tests/gpt/test_sample.py

# The sanitizer runtime must be loaded before Python itself, hence LD_PRELOAD.
# Leak checking is off: the interpreter keeps memory alive at exit by design.
sanitize:
	MINGPT_BUILD=sanitize $(PYTHON) mingpt_c/_build.py
	LD_PRELOAD="$$($(CC) -print-file-name=libasan.so) $$($(CC) -print-file-name=libubsan.so)" \
	ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
	MINGPT_SANITIZE=1 $(PYTHON) -m pytest -q -p no:cacheprovider $(SANITIZE_TESTS); \
	status=$$?; $(PYTHON) mingpt_c/_build.py >/dev/null; exit $$status

cuda:
	MINGPT_CUDA=1 $(PYTHON) mingpt_c/_build.py

cuda-objs:
	$(PYTHON) mingpt_c/_build.py --cuda-objects

gpu-check:
	bash scripts/gpu_check.sh

bench: build
	$(PYTHON) bench/bench_kernels.py

clean:
	rm -rf build/ mingpt_c/_C*.so mingpt_c/_C.c mingpt_c/__pycache__ tests/__pycache__ .pytest_cache
