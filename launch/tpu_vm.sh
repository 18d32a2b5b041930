#!/usr/bin/env bash
# omni on a multi-host Cloud TPU VM slice: the same `omni train` on every worker, over gcloud ssh.
#   launch/tpu_vm.sh TPU_NAME ZONE            (change the omni train arguments below)
#   launch/tpu_vm.sh TPU_NAME ZONE --print    (show the gcloud command; run nothing)
# On TPU VMs jax.distributed finds the other workers itself (omni sees TPU_WORKER_HOSTNAMES).
# WORKDIR must be shared storage (a gs:// bucket or NFS). Not run from this repository (no TPU here).
set -euo pipefail
tpu=$1; zone=$2; shift 2
exec omni launch tpu-vm --tpu "$tpu" --zone "$zone" "$@" -- \
  --config configs/base.py --workdir gs://YOUR_BUCKET/runs/base --config.mesh.fsdp=-1
