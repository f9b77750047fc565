#!/usr/bin/env bash
# The GPU run of `robot-rl bench gpu` (docs/benchmarks.md#bench-gpu): every learner's update on CUDA
# against the same code on the CPU, losses checked, checkpoints reloaded on the CPU; about 7 minutes
# on one GPU. Everything it writes goes into $OUT (default /tmp/robot_rl-gpu-check):
#   nvidia-smi.txt  the GPU, driver and clocks, before and after the run
#   env.txt         Python, torch, CUDA, the commit, the command run
#   gpu.json        the figures (robot-rl bench gpu --json)
#   gpu.txt         the table;  gpu.log  the run's stderr (a line per case as it finishes)
#
#   benchmarks/gpu_check.sh [--allow-cpu] [--quick] [--wheels DIR]
#     --allow-cpu   run the cpu mode where torch sees no CUDA device (without it: exit 2 at once)
#     --quick       the smoke-test sizes (seconds, not minutes)
#     --wheels DIR  first install the wheels in DIR, offline and without dependencies: for a Python
#                   that has torch but not robot_rl's other dependencies
# Python: $PYTHON, else .venv/bin/python, else python3; robot_rl is imported from this checkout.
# Exit status: 0 every case ran and passed its checks; 1 the run ended but a check failed (listed at
# the end of gpu.txt, and in gpu.json's "failures"); 2 it could not run.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
allow_cpu=0; quick=(); wheels=""
while [ $# -gt 0 ]; do
  case "$1" in
    --allow-cpu) allow_cpu=1 ;;
    --quick) quick=(--quick) ;;
    --wheels) wheels="${2:?--wheels needs a folder}"; shift ;;
    *) echo "gpu_check.sh: unknown option $1 (--allow-cpu, --quick, --wheels DIR)" >&2; exit 2 ;;
  esac
  shift
done
OUT="${OUT:-/tmp/robot_rl-gpu-check}"
PY="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || command -v python3 )}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" MUJOCO_GL="${MUJOCO_GL:-egl}"
mkdir -p "$OUT" || exit 2
echo "gpu_check.sh: writing into $OUT with $PY"

# 1. The GPU as the driver sees it.
{ nvidia-smi && nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.sm --format=csv; } >"$OUT/nvidia-smi.txt" 2>&1 || echo "nvidia-smi: not found or failed" >>"$OUT/nvidia-smi.txt"
# 2. Python, torch and CUDA as robot_rl will see them, and the code being measured.
"$PY" -c 'import sys, torch; c = torch.cuda.is_available(); print(f"python {sys.version.split()[0]}\ntorch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}\ncuda available: {c}" + (f", {torch.cuda.get_device_name(0)}" if c else ""))' >"$OUT/env.txt" 2>&1 || { echo "gpu_check.sh: $PY cannot import torch (see $OUT/env.txt)" >&2; exit 2; }
echo "commit $(git rev-parse HEAD 2>/dev/null || echo unknown)$(GIT_OPTIONAL_LOCKS=0 git status --porcelain 2>/dev/null | grep -q . && echo ' (with local changes)')" >>"$OUT/env.txt"
cat "$OUT/env.txt"
# 3. No CUDA device: stop here, unless the cpu mode was asked for.
grep -q "cuda available: True" "$OUT/env.txt" || [ "$allow_cpu" = 1 ] || { echo "gpu_check.sh: torch sees no CUDA device (nvidia-smi: $OUT/nvidia-smi.txt); --allow-cpu runs the cpu mode instead" >&2; exit 2; }
# 4. robot_rl's other dependencies, from wheels carried in (no network on the device machine).
[ -z "$wheels" ] || "$PY" -m pip install --quiet --no-index --no-deps "$wheels"/*.whl || { echo "gpu_check.sh: installing the wheels in $wheels failed" >&2; exit 2; }
"$PY" -c 'import robot_rl.commands.bench.gpu' 2>>"$OUT/gpu.log" || { echo "gpu_check.sh: robot_rl does not import with $PY (see $OUT/gpu.log; --wheels DIR brings its dependencies)" >&2; exit 2; }
# 5. The benchmark, under a hard limit above its own 400 s budget.
echo "command: $PY -m robot_rl.cli bench gpu ${quick[*]} --json $OUT/gpu.json" >>"$OUT/env.txt"
timeout 560 "$PY" -m robot_rl.cli bench gpu "${quick[@]}" --json "$OUT/gpu.json" 2>>"$OUT/gpu.log" | tee "$OUT/gpu.txt"; status=$?
nvidia-smi --query-gpu=name,memory.used,memory.total,clocks.sm,temperature.gpu --format=csv >>"$OUT/nvidia-smi.txt" 2>&1 || true
[ "$status" = 0 ] || { echo "gpu_check.sh: robot-rl bench gpu exited $status (124: the 560 s limit); its stderr: $OUT/gpu.log" >&2; tail -5 "$OUT/gpu.log" >&2; exit 2; }
# 6. The verdict: every case ran, its losses finite, its checkpoint matched on the CPU.
"$PY" -c 'import json, sys; r = json.load(open(sys.argv[1])); print("gpu_check.sh: device", r["device"], "-", "all checks passed" if r["ok"] else "FAILED: " + "; ".join(r["failures"])); sys.exit(0 if r["ok"] else 1)' "$OUT/gpu.json"
