#!/usr/bin/env bash
# The GPU checks in one short call, each part with its own time limit. `bash benchmarks/gpu.sh` runs the
# default parts (below); `bash benchmarks/gpu.sh eager compile` runs the ones named, in that order:
#   tests: the tests that need a GPU (Triton kernels compiled on CUDA, half precision, deterministic training);
#   eager: the CUDA rows of the benchmark, bf16: eager inference at batch 1 and 256, a training step at batch 128;
#   profile: where the time goes: operator profiles of ours and timm (training b128, inference b1 and b256);
#   no_triton: the eager rows again without the Triton kernel (ours, transformers);
#   graphed: batch-1 latency with CUDA graphs for ours and the peers alike: each eager forward captured and
#            replayed (and batch 256);
#   cudagraphs: batch-1 latency under torch.compile's reduce-overhead mode (CUDA graphs of compiled code);
#   compile_train: the compiled training step at batch 128 (ours, timm), with the time its compiling needs;
#   compile: compiled inference at batch 256 and 1 (ours, transformers: the best compiled peer last time).
# The default (tests eager graphed compile_train, at most 580 s) fits one call and one session's device time with
# the machine's start-up; cudagraphs and compile each need a call of their own.
# The benchmark writes its JSON after every row, so a part cut short keeps what it measured. The default
# parts write six files to $OUT (the device tool brings back eight): render a JSON with `bench.py --render FILE`.
set -u
OUT=${OUT:-benchmarks/gpu-out}
PY=${PY:-python3}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
mkdir -p "$OUT"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  $PY -c "import torch, triton, transformers, timm, torchvision as tv
print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__,
      'timm', timm.__version__, 'torchvision', tv.__version__)"; } > "$OUT/gpu.txt" 2>&1
cat "$OUT/gpu.txt"

QUICK="--busy 1 --max-wait 1"  # a GPU row barely feels other CPU load; never wait long for a quiet host
bench() {  # bench NAME SECONDS ARGS...: one benchmark invocation; its JSON in $OUT, its log appended to bench.log
    local name=$1 limit=$2
    shift 2
    echo "==== $name" >> "$OUT/bench.log"
    timeout "$limit" $PY benchmarks/bench.py --device cuda --dtype bf16 $QUICK --json "$OUT/$name.json" "$@" \
        >> "$OUT/bench.log" 2>&1
    echo "== $name rc=$?"
    sed -n "/^==== $name/,\$p" "$OUT/bench.log" | grep -E "^# (agreement|cuda|warning)"
}
profile() {  # profile SECONDS ARGS...: operator tables appended to profiles.txt
    local limit=$1
    shift
    timeout "$limit" $PY benchmarks/profile_ops.py --device cuda --dtype bf16 --rows 25 --out /tmp/swinv2-prof "$@" \
        2>&1 | grep -E "^#|Error|error:"
    cat /tmp/swinv2-prof/*.txt > "$OUT/profiles.txt" 2>/dev/null
}

for part in ${*:-tests eager graphed compile_train}; do
    case $part in
    tests)
        timeout 120 $PY -m pytest -q -p no:cacheprovider tests/test_kernels.py tests/test_gpu_robust.py \
            > "$OUT/tests.log" 2>&1
        echo "== tests rc=$?"; tail -3 "$OUT/tests.log" ;;
    eager) bench eager 110 --mode eager --task infer,train --repeats 5 --warmup 2 ;;
    profile)
        profile 45 --task train --batch 128 --impls ours,timm
        profile 30 --task infer --batch 1 --impls ours,timm
        profile 30 --task infer --batch 256 --impls ours,timm ;;
    no_triton)
        SWINV2_DISABLE_TRITON=1 bench eager_no_triton 35 --mode eager --task infer,train --batch 256 \
            --impls ours,transformers --repeats 3 ;;
    compile) bench compile 150 --mode compile --task infer --batch 256,1 --impls ours,transformers --repeats 5 ;;
    graphed) bench graphed 50 --mode graphed --task infer --batch 1,256 --repeats 7 ;;
    cudagraphs) bench graphs 140 --mode cudagraphs --task infer --batch 1 --impls ours,timm,transformers --repeats 7 ;;
    compile_train) bench compile_train 300 --mode compile --task train --impls ours,timm --repeats 3 --warmup 1 ;;
    *) echo "unknown part $part (tests, eager, profile, no_triton, compile, graphed, cudagraphs, compile_train)"; exit 2 ;;
    esac
done
