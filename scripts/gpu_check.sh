#!/usr/bin/env bash
# The device checks in one call, for the lent GPU machine (its own python3, torch and Triton, no package
# registry): install the package in place with its CUDA extension (pip, offline: an editable install is what maps
# kernels/ to mcm_fast.kernels, which PYTHONPATH alone does not), run the GPU tests (CUDA and Triton backends,
# the CUDA-graph sampler), then the benchmarks; on an H100 or H200 their table adds each row's roofline time
# from the public peaks and the fraction of it measured (benchmarks/roofline.py; the prediction is in
# docs/benchmarks.md). Each stage has its own time limit; logs go to $OUT/<stage>.log, the summaries to stdout.
#   bash scripts/gpu_check.sh                 (in the repository root; OUT defaults to /tmp/gpu_check)
set -uo pipefail
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 MAX_JOBS=16 TORCH_CUDA_ARCH_LIST=9.0 MCM_FAST_BUILD_CUDA=1 PYTHONPATH=$PWD
stage() {  # stage NAME SECONDS LINES COMMAND...: runs COMMAND under a time limit, prints its last LINES lines
    local name=$1 limit=$2 lines=$3 start=$SECONDS
    shift 3
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    echo "== $name: exit $? after $((SECONDS - start)) s"
    tail -n "$lines" "$OUT/$name.log"
}
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,memory.total --format=csv,noheader
git log -1 --format='commit %h' 2>/dev/null
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
stage install "${BUILD_S:-150}" 3 python3 -m pip install --no-index --no-build-isolation --no-deps -e .
python3 -c "import mcm_fast as mf; print('backends', {op: mf.available_backends(op) for op in ('ddim_step', 'mcm_target_loss', 'attention')})"
stage tests "${TESTS_S:-130}" 15 python3 -m pytest -q -n 8 -p no:cacheprovider -rfE \
    tests/ops/test_ddim.py tests/ops/test_mcm_loss.py tests/ops/test_attention.py tests/models/test_uvit.py tests/ops/test_fast_paths.py \
    -k "cuda or triton or captured or agree or opcheck or attention"
stage bench_fast "${FAST_S:-200}" 20 python3 -m pytest -q -p no:cacheprovider benchmarks/test_sampling.py benchmarks/test_train_step.py
MCM_FAST_BENCH_MIB=${MCM_FAST_BENCH_MIB:-16,256} stage bench_kernels "${KERNELS_S:-100}" 75 python3 -m pytest -q -p no:cacheprovider \
    benchmarks/test_ddim.py benchmarks/test_mcm_loss.py benchmarks/test_attention.py
