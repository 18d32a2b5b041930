#!/usr/bin/env bash
# Variants of `omni bench --config configs/gpu_1b.py --synthetic` on one GPU, each in its own
# process (an out-of-memory variant cannot spoil the next), for a short lease of a machine whose
# Python already has jax[cuda], flax, optax and orbax:
#
#   bash launch/gpu_bench.sh [OUT_DIR] [VARIANT ...]
#
# Prints one JSON line per variant (step time, tokens/s, MFU against the bf16 matmul peak measured
# in the same process) and writes them to OUT_DIR/results.jsonl, stderr tails to OUT_DIR/log.txt,
# and a profiler trace of the first variant to OUT_DIR/<variant>.xplane.pb.gz.
# PROFILE=0 skips the trace (its extra steps change the reported loss).
# EXTRA_ARGS adds overrides to every variant (a CPU smoke test: tiny widths).
# Wheels of missing pure-Python packages (ml_collections) may wait in .whl/.
set -u
out=${1:-${OUT:-/tmp/omni_gpu_bench}}
shift || true
mkdir -p "$out"
python=${PYTHON:-python3}
if compgen -G ".whl/*.whl" > /dev/null; then
  $python -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/omni_site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/omni_site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-}
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm --format=csv,noheader | tee -a "$out/log.txt"

# Each variant changes configs/gpu_1b.py (batch 128, bf16 residual stream, remat dots, attention
# fused: cuDNN's flash kernel on a GPU) in one way.
declare -A variants=(
  [base]=""
  [batch64]="--config.train.batch_size=64"
  [residual_f32]="--config.model.residual_dtype=float32"
  [batch64_residual_f32]="--config.train.batch_size=64 --config.model.residual_dtype=float32"
  [xla_attention]="--config.model.attention=xla"
  [einsum_attention]="--config.model.attention=einsum"
  [remat_full]="--config.model.remat=full"
  [batch64_remat_none]="--config.train.batch_size=64 --config.model.remat=none"
)
order=("$@")
[ ${#order[@]} -eq 0 ] && order=(base xla_attention batch64 einsum_attention)
for name in "${order[@]}"; do
  [[ -v "variants[$name]" ]] || { echo "unknown variant '$name' (known: ${!variants[*]})" >&2; exit 2; }
done

first=1
for name in "${order[@]}"; do
  profile=()
  if [ $first = 1 ] && [ "${PROFILE:-1}" = 1 ]; then profile=(--profile "/tmp/omni_trace_$name"); fi
  first=0
  started=$(date +%s)
  # shellcheck disable=SC2086  # the variant's overrides are meant to split into words
  timeout "${VARIANT_TIMEOUT:-170}" $python -m omni.cli bench --config configs/gpu_1b.py --synthetic \
    --steps 5 ${variants[$name]} ${EXTRA_ARGS:-} "${profile[@]}" > "/tmp/omni_$name.json" 2> "/tmp/omni_$name.err"
  rc=$?
  line=$(tail -n 1 "/tmp/omni_$name.json")
  # only a JSON result goes into results.jsonl (a crash leaves a traceback or nothing)
  printf '%s' "$line" | $python -c 'import json, sys; json.load(sys.stdin)' 2> /dev/null || line=null
  echo "{\"variant\": \"$name\", \"rc\": $rc, \"wall_s\": $(( $(date +%s) - started )), \"result\": $line}" \
    | tee -a "$out/results.jsonl"
  { echo "== $name (rc $rc)"; tail -n 15 "/tmp/omni_$name.err"; } >> "$out/log.txt"
  if [ ${#profile[@]} -gt 0 ]; then
    trace=$(find "/tmp/omni_trace_$name" -name '*.xplane.pb' | head -n 1)
    [ -n "$trace" ] && gzip -c "$trace" > "$out/$name.xplane.pb.gz"
  fi
done
