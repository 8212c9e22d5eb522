#!/usr/bin/env bash
# make gpu-check: everything a GPU machine must verify, in one command.
#   1. the GPU, the toolkit, and the Python packages the build needs
#   2. make cuda (the CUDA-enabled module)
#   3. the CUDA tests (tests/gpu): every kernel against its CPU twin, the
#      errors, training on the GPU against the CPU, across devices
#   4. a subset under compute-sanitizer: memcheck on the kernel tests,
#      racecheck on the attention tests, both on the fused attention's
#   5. the GPU benchmark: GPT-2 124M, block 1024, batch 16, ours beside
#      PyTorch eager bf16 and torch.compile (when torch is importable)
# Writes one summary (gpu_check_summary.md) and a log per step into $OUT when
# it is set, else into build/gpu-check/. Exit status: 0 when every step passed.
set -uo pipefail
cd "$(dirname "$0")/.."
DIR="${OUT:-build/gpu-check}"
mkdir -p "$DIR"
SUMMARY="$DIR/gpu_check_summary.md"
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1
: > "$SUMMARY"
failed=0
say() { echo "$*" | tee -a "$SUMMARY"; }

# step NAME SECONDS CMD...: runs CMD with a time limit, logs to $DIR/NAME.log,
# and adds one line to the summary with the status, the time and the last line.
step() {
    local name=$1 limit=$2
    shift 2
    local t0=$SECONDS rc
    timeout --signal=INT --kill-after=15 "$limit" "$@" > "$DIR/$name.log" 2>&1
    rc=$?
    local last
    last=$(grep -v '^\s*$' "$DIR/$name.log" | tail -n 1 | cut -c1-200)
    if [ $rc -eq 0 ]; then
        say "- **$name**: ok in $((SECONDS - t0)) s: $last"
    else
        [ $rc -eq 124 ] && last="timed out after $limit s; $last"
        say "- **$name**: FAILED (exit $rc) in $((SECONDS - t0)) s: $last"
        failed=1
    fi
    return $rc
}

say "# make gpu-check, $(date -u '+%Y-%m-%d %H:%M UTC')"
say ""
say "- GPU: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | head -n 1)"
say "- nvcc: $(nvcc --version 2>&1 | grep -o 'release [0-9.]*' || echo 'not found')"
say "- python: $($PY --version 2>&1); commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
missing=$($PY - <<'PY'
import importlib.util
need = ["cffi", "pycparser", "numpy", "click", "tqdm", "tiktoken", "regex", "safetensors", "pytest"]
print(" ".join(m for m in need if importlib.util.find_spec(m) is None))
PY
)
if [ -n "$missing" ]; then
    say "- missing Python packages: $missing (install them, or carry them as wheels); stopping"
    exit 2
fi
torch_ok=$($PY -c "import torch; print(torch.__version__, torch.cuda.is_available())" 2>/dev/null || echo "no")
say "- torch: $torch_ok"
say ""

step build 150 make cuda || { say ""; say "build failed: nothing else runs"; exit 1; }
step env 30 $PY cli.py env
step tests 120 $PY -m pytest -q -p no:cacheprovider -rf tests/gpu
if command -v compute-sanitizer >/dev/null 2>&1; then
    step memcheck 100 compute-sanitizer --tool memcheck --error-exitcode 3 --leak-check no \
        $PY -m pytest -q -p no:cacheprovider tests/gpu/test_cuda_ops.py -k "not bf16 and not tf32"
    step racecheck 50 compute-sanitizer --tool racecheck --error-exitcode 3 \
        $PY -m pytest -q -p no:cacheprovider tests/gpu/test_cuda_ops.py -k "attention and not bf16 and not tf32"
    # the fused attention at the small shapes (T <= 257): bounds, then its shared-memory tiles
    step flash-memcheck 45 compute-sanitizer --tool memcheck --error-exitcode 3 --leak-check no \
        $PY -m pytest -q -p no:cacheprovider tests/gpu/test_flash_attention.py -k "matches and not 1024 and not 2048"
    step flash-racecheck 45 compute-sanitizer --tool racecheck --error-exitcode 3 \
        $PY -m pytest -q -p no:cacheprovider tests/gpu/test_flash_attention.py -k "matches and not 1024 and not 2048"
else
    say "- **sanitizer**: compute-sanitizer not found: skipped"
fi
step bench 180 $PY cli.py bench --device cuda --config "${GPU_CHECK_BENCH:-gpt2-1024}" --rounds 3 --steps 10
say ""
say '```'
grep -E "GPU:|matmul|tokens/s|mingpt-c|PyTorch|torch.compile|ours /" "$DIR/bench.log" >> "$SUMMARY" 2>/dev/null
say '```'
say ""
if [ $failed -eq 0 ]; then say "gpu-check: all steps passed"; else say "gpu-check: FAILED (see the logs in $DIR)"; fi
exit $failed
