#!/usr/bin/env bash
# The gpu profile on a bare GPU machine (Python 3.11 + CUDA, no network), end to end:
#   1. install what is missing from a carried wheel folder (pip --no-index);
#   2. check torch 2.14.1 + torchvision 0.29.1 and CUDA (torch is too big to carry: the machine must have it);
#   3. read the data pack (or build it with `bcfeat pack` when a full data root is at hand);
#   4. run `python -m bcfeat.runner --profile gpu` with the pack as the data root;
#   5. run benchmarks/bench_gpu.py;
#   6. tar the executed notebooks, tables, JSON and logs into ONE archive under $OUT (few files come back).
#
# Usage (repository root):
#   scripts/gpu_run.sh                                  # on the GPU machine: gpu profile, CUDA
#   scripts/gpu_run.sh --profile smoke --device cpu     # dry run of the whole chain on a CPU
# Options: --profile P, --device cuda|cpu, --pack DIR, --wheels DIR, --out DIR, --skip-bench, --skip-study
#
# Filling the wheel folder (on a machine with network, same Python 3.11 / platform), into the
# git-ignored gpu_carry/ that travels with the working tree (64 MiB in all, the pack included):
#   pip download --only-binary=:all: --python-version 3.11 --platform manylinux2014_x86_64 \
#       --no-deps -d gpu_carry/wheels -r <(grep -v -i -E '^(torch|torchvision|nvidia|triton)' requirements.lock)
#   pip wheel --no-deps -w gpu_carry/wheels .          # bcfeat itself (or rely on PYTHONPATH, as below)
# Carry only what the GPU machine lacks (check there first with `pip list`): the pack is ~46 MiB, so
# about 18 MiB remain for wheels. torch (~900 MiB with its CUDA libraries) cannot be carried.
#   cp -r ../bcfeat_pack gpu_carry/pack                 # the pack, built with `bcfeat pack`
set -euo pipefail

PROFILE=gpu
DEVICE=cuda
PACK=""
WHEELS=gpu_carry/wheels
OUTDIR="${OUT:-$PWD/artifacts/gpu_run}"
SKIP_BENCH=0
SKIP_STUDY=0
while [ $# -gt 0 ]; do
  case "$1" in
    --profile) PROFILE="$2"; shift 2 ;;
    --device) DEVICE="$2"; shift 2 ;;
    --pack) PACK="$2"; shift 2 ;;
    --wheels) WHEELS="$2"; shift 2 ;;
    --out) OUTDIR="$2"; shift 2 ;;
    --skip-bench) SKIP_BENCH=1; shift ;;
    --skip-study) SKIP_STUDY=1; shift ;;
    -h|--help) sed -n '2,26p' "$0"; exit 0 ;;
    *) echo "gpu_run.sh: unknown option $1" >&2; exit 2 ;;
  esac
done

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] && PY="${PYTHON:-.venv/bin/python}"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
WORK="$OUTDIR/gpu_run"
mkdir -p "$WORK"
LOG="$WORK/gpu_run.log"
T0=$(date +%s)
say() { echo "[gpu_run $(( $(date +%s) - T0 ))s] $*" | tee -a "$LOG"; }
say "profile $PROFILE, device $DEVICE, python $($PY -c 'import sys; print(sys.version.split()[0])'), out $OUTDIR"

# 1. wheels: install whatever is missing, offline
if [ -d "$WHEELS" ] && ls "$WHEELS"/*.whl >/dev/null 2>&1; then
  say "installing from $WHEELS (offline, only what is missing)"
  $PY -m pip install --no-index --find-links "$WHEELS" "$WHEELS"/*.whl 2>&1 | tail -3 | tee -a "$LOG" || true
else
  say "no wheel folder at $WHEELS: using what is installed"
fi

# 2. torch, torchvision, CUDA
$PY - "$DEVICE" <<'EOF' 2>&1 | tee -a "$LOG"
import sys
need = {"torch": "2.14.1", "torchvision": "0.29.1"}
bad = []
for name, version in need.items():
    try:
        mod = __import__(name)
    except ImportError:
        bad.append(f"{name} is not installed (need {version}; too big to carry: install it on the machine)")
        continue
    have = mod.__version__.split("+")[0]
    print(f"{name} {mod.__version__}" + ("" if have == version else f"  (expected {version}: results may differ)"))
missing = []
for name in ("papermill", "jupytext", "sklearn", "pandas", "skimage", "PIL", "tqdm", "matplotlib"):
    try:
        __import__(name)
    except ImportError:
        missing.append(name)
if missing:
    bad.append("missing packages (put their wheels in the wheel folder): " + ", ".join(missing))
import torch
if sys.argv[1].startswith("cuda"):
    if not torch.cuda.is_available():
        bad.append("CUDA requested but torch sees no GPU")
    else:
        print("CUDA", torch.version.cuda, "|", torch.cuda.get_device_name(), "|",
              round(torch.cuda.get_device_properties(0).total_memory / 2**30), "GiB")
if bad:
    print("NOT READY:\n  " + "\n  ".join(bad))
    sys.exit(3)
print("environment ready")
EOF

# 3. the data pack
if [ -z "$PACK" ]; then
  for candidate in gpu_carry/pack ../bcfeat_pack; do
    if [ -f "$candidate/pack.json" ]; then PACK="$candidate"; break; fi
  done
fi
if [ -z "$PACK" ] || [ ! -f "$PACK/pack.json" ]; then
  PACK="${PACK:-$ROOT/../bcfeat_pack}"
  say "no pack found: building one at $PACK from the data root (needs the full data)"
  $PY -m bcfeat.runner.cli pack --output "$PACK" 2>&1 | tail -5 | tee -a "$LOG"
fi
PACK="$(cd "$PACK" && pwd)"
say "pack $PACK: verifying its sha256 manifest"
$PY -m bcfeat.runner.cli verify --root "$PACK" 2>&1 | tail -3 | tee -a "$LOG"
export BCFEAT_DATA_ROOT="$PACK"

# 4. the study
STATUS=0
if [ "$SKIP_STUDY" = 0 ]; then
  say "running the $PROFILE profile into $WORK/$PROFILE"
  S0=$(date +%s)
  if [ "$DEVICE" = cpu ]; then CUDA_VISIBLE_DEVICES="" ; export CUDA_VISIBLE_DEVICES; fi
  $PY -m bcfeat.runner --profile "$PROFILE" --output "$WORK/$PROFILE" 2>&1 | tee -a "$LOG" \
    || STATUS=$?
  say "study finished with status $STATUS in $(( $(date +%s) - S0 )) s"
fi

# 5. the benchmark
if [ "$SKIP_BENCH" = 0 ]; then
  QUICK=""
  [ "$DEVICE" = cpu ] && QUICK="--quick"
  say "benchmark (bench_gpu.py --device $DEVICE $QUICK)"
  B0=$(date +%s)
  $PY benchmarks/bench_gpu.py --device "$DEVICE" $QUICK --images "$PACK/datasets" --out "$WORK/bench_gpu.json" \
    2>&1 | grep -v -i warning | tee -a "$LOG" || STATUS=$?
  say "benchmark finished in $(( $(date +%s) - B0 )) s"
fi

# 6. one archive back
say "total $(( $(date +%s) - T0 )) s; archiving"
RUNS="artifacts/runs/$PROFILE"
tar -czf "$OUTDIR/gpu_run_${PROFILE}.tar.gz" -C "$OUTDIR" gpu_run \
  $( [ -d "$RUNS" ] && echo "-C $ROOT $RUNS" ) 2>/dev/null || tar -czf "$OUTDIR/gpu_run_${PROFILE}.tar.gz" -C "$OUTDIR" gpu_run
ls -la "$OUTDIR/gpu_run_${PROFILE}.tar.gz" | tee -a "$LOG"
rm -rf "$WORK"  # only the archive comes back
exit $STATUS
