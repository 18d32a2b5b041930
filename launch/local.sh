#!/usr/bin/env bash
# N processes of one omni command on this machine, as a multi-host run would have them.
#
#   launch/local.sh N [--devices TOTAL] -- omni train --config configs/tiny.py --config.mesh.data=-1
#
# Each process gets TOTAL/N virtual CPU devices (TOTAL defaults to N) and the coordinator
# variables that omni reads (OMNI_COORDINATOR, OMNI_NUM_PROCESSES, OMNI_PROCESS_ID). If any
# process fails, the others are stopped and the launcher exits with that process's status.
# SIGTERM or SIGINT to the launcher reaches every process: they save at one agreed step and exit 0.
set -euo pipefail

if [[ $# -lt 3 ]]; then
  echo "usage: launch/local.sh N [--devices TOTAL] -- COMMAND..." >&2
  exit 2
fi
num_processes=$1; shift
total_devices=$num_processes
if [[ "$1" == "--devices" ]]; then total_devices=$2; shift 2; fi
if [[ "$1" != "--" ]]; then echo "local.sh: expected -- before the command" >&2; exit 2; fi
shift
if (( total_devices % num_processes )); then
  echo "local.sh: --devices $total_devices is not divisible by $num_processes processes" >&2
  exit 2
fi
per_process=$(( total_devices / num_processes ))
port=${OMNI_PORT:-$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}

pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; }
trap cleanup INT TERM

for (( i = 0; i < num_processes; i++ )); do
  OMNI_COORDINATOR="127.0.0.1:$port" OMNI_NUM_PROCESSES=$num_processes OMNI_PROCESS_ID=$i \
  JAX_PLATFORMS=${JAX_PLATFORMS:-cpu} \
  XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=$per_process" \
    "$@" &
  pids+=($!)
done

declare -A alive=()
for pid in "${pids[@]}"; do alive[$pid]=1; done
status=0
# Wait for each process as it finishes (bash >= 5.1: `wait -n -p`); the first failure stops the
# others, and its status is the launcher's. (`wait -n || code=$?` keeps wait's own status:
# inside `if ! wait -n`, $? would be the negation's.)
while (( ${#alive[@]} > 0 )); do
  code=0
  finished=""
  wait -n -p finished "${!alive[@]}" || code=$?
  # A signal to the launcher interrupts `wait` before any process finished; the trap has passed
  # it on to them, so keep waiting for their own statuses.
  [[ -n "${finished:-}" ]] || continue
  unset "alive[$finished]"
  if (( code != 0 && status == 0 )); then
    status=$code
    echo "local.sh: a process exited with status $code; stopping the others" >&2
    cleanup
  fi
done
exit $status
