#!/usr/bin/env bash
# One call on a lent CUDA machine (the workplace's `device` tool): GPU parity
# tests, the GPU SSC kernels and the whole pipeline on CuPy against Numba in the
# same run. Each step has its own time limit, so one that hangs costs only its
# share; logs and JSON land in $OUT.
#
# What travels (about 45 MiB; SimpleITK is not needed: NIfTI goes through
# nibabel and bench_pipeline makes ct512 with NumPy):
#   .gpu/whl/   nibabel, isal and meshio wheels for the machine's Python (the
#               pipeline writes its meshes as PLY there: VTK is not installed)
#   .gpu/data/  a data root holding totalsegmentator_example/{example_ct,
#               example_seg_fast_force_split}.nii.gz and 10 held-out
#               msd_hippocampus cases (images/ + labels/)
#   bench/cache/hippocampus_642.npz, bench/cache/kidney_model.npz
#
#   bash bench/gpu_session.sh [steps]     # steps: tests batched pipeline gpu (default all)
set -u
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 SHAPEPRIOR_DATA=$PWD/.gpu/data NUMBA_CACHE_DIR=/tmp/numba_cache
STEPS=${*:-tests batched pipeline gpu}
PY=python3

$PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .gpu/whl/*.whl || exit 1
ln -sfn "$PWD/kernels" /tmp/site/shapeprior_kernels
export PYTHONPATH=/tmp/site:$PWD
{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv
  nproc; $PY -c "import numpy, numba, scipy, cupy; print('numpy', numpy.__version__, 'numba',
numba.__version__, 'scipy', scipy.__version__, 'cupy', cupy.__version__)"; } 2>&1 | tee "$OUT/machine.txt"

step() {  # name, limit (s), command...
    local name=$1 limit=$2; shift 2
    case " $STEPS " in *" $name "*) ;; *) return ;; esac
    local t0=$SECONDS
    timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
    local rc=$?; echo "step $name rc=$rc $((SECONDS - t0)) s" | tee -a "$OUT/steps.txt"
    tail -n 12 "$OUT/$name.log"
}

step tests 75 $PY -m pytest -q -n 0 -p no:cacheprovider -m gpu \
    tests/test_kernels.py tests/test_ssc.py tests/test_segment.py tests/test_batched_ssc.py
step batched 120 $PY bench/bench_batched_gpu.py --out "$OUT/batched_gpu.json"
step pipeline 150 $PY bench/bench_pipeline.py --cases 10 --skip io batch ct512_noseed \
    --backends numba,cupy --mesh-format ply --out "$OUT/pipeline_gpu.json"
step gpu 50 $PY bench/bench_gpu.py --out "$OUT/gpu_ssc.json"
cat "$OUT/steps.txt"
