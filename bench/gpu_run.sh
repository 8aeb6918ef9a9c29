#!/usr/bin/env bash
# The GPU benchmarks (issue #5, item 6) in one prepared run for a lent CUDA machine with a time limit.
#
#   bash bench/gpu_run.sh [OUT_DIR]
#
# Runs, each with its own time limit so that a slow stage cannot starve the others:
#   1. Table I at full sizes (Closest-1M, FID on 10k samples, ReconD 32 restarts x 1000 steps) on the quick zoo;
#   2. the speed part at full sizes (1M-sample BF-OI and a batch-size sweep, OB-OI, scale-out over two
#      processes, end-to-end `dgmscan scan` and `dgmscan serve` per profile).
# Results: bench/results/{table1,speed}_cuda.json (the speed file is rewritten after every stage, so a
# cut-off run keeps what it finished) and logs; everything is also copied to OUT_DIR when given.
#
# The machine needs python3 with a CUDA torch. The quick zoo is built on a CPU beforehand
# (`python -m bench run --quick --parts table1` builds it into bench/out/zoo) and travels with the
# working tree, since training it is not what is being measured. Packages the machine lacks travel as
# wheels in .whl/ (py3.12 manylinux; the project itself as a wheel too, for its entry points), installed
# into /tmp/site without network access.
set -u
cd "$(dirname "$0")/.."
OUT_DIR=${1:-}
PY=${PY:-python3}
LOGS=bench/results/gpu_logs
mkdir -p "$LOGS"
export PYTHONUNBUFFERED=1

if [ -d .whl ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "gpu_run: wheel install failed" >&2; exit 2; }
  export PYTHONPATH=/tmp/site
fi
"$PY" - <<'EOF' 2>&1 | tee "$LOGS/env.txt"
import torch, sys
print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda)
print("device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "NO CUDA")
EOF

stage() {  # stage NAME SECONDS ARGS...: one bench invocation under its own time limit
  local name=$1 limit=$2
  shift 2
  local t0=$SECONDS
  timeout --signal=TERM --kill-after=10 "$limit" "$PY" -m bench run --device cuda --zoo quick --cached-only "$@" \
    >"$LOGS/$name.log" 2>&1
  echo "gpu_run: $name rc=$? in $((SECONDS - t0)) s" | tee -a "$LOGS/stages.txt"
}

stage table1 ${TABLE1_LIMIT:-150} --parts table1
stage speed ${SPEED_LIMIT:-330} --parts speed --e2e-repeats 1 --resume

if [ -n "$OUT_DIR" ]; then
  mkdir -p "$OUT_DIR"
  cp bench/results/*_cuda.json "$OUT_DIR"/ 2>/dev/null
  tar -czf "$OUT_DIR/gpu_logs.tgz" -C bench/results gpu_logs
fi
