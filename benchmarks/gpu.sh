#!/usr/bin/env bash
# The GPU checks in one short call: the Triton kernel tests on CUDA, then the CUDA rows of the benchmark
# (bf16: eager inference at batch 1 and 256 and a training step at batch 128; the eager batch-256 row again
# without the Triton kernel; compiled inference). Each part has its own time limit, and the benchmark writes
# its JSON after every row, so a run cut short keeps what it measured. Results go to $OUT.
set -u
OUT=${OUT:-benchmarks/gpu-out}
PY=${PY:-python3}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1
$PY -c "import torch, triton; print(torch.__version__, triton.__version__)" >> "$OUT/gpu.txt" 2>&1
cat "$OUT/gpu.txt"
run() {  # run NAME SECONDS ARGS...: one benchmark invocation, its log and table in $OUT
    local name=$1 limit=$2
    shift 2
    timeout "$limit" $PY benchmarks/bench.py --device cuda --dtype bf16 --json "$OUT/$name.json" \
        --markdown "$OUT/$name.md" "$@" > "$OUT/$name.log" 2>&1
    echo "== $name rc=$?"
    grep -E "^# (agreement|cuda|warning)" "$OUT/$name.log"
}
timeout 90 $PY -m pytest -q -p no:cacheprovider tests/test_kernels.py > "$OUT/test_kernels.log" 2>&1
echo "== test_kernels rc=$?"; tail -3 "$OUT/test_kernels.log"
run eager 100 --mode eager --task infer,train --repeats 5 --warmup 2
SWINV2_DISABLE_TRITON=1 run eager_no_triton 40 --mode eager --task infer --batch 256 --impls ours,transformers --repeats 5
run compile 170 --mode compile --task infer --batch 256,1 --repeats 5 --warmup 2
