#!/usr/bin/env bash
# omni on a multi-host Cloud TPU VM slice: the same command on every worker.
#   launch/tpu_vm.sh TPU_NAME ZONE          (the one line to change is the omni command below)
# On TPU VMs jax.distributed.initialize() finds the other workers itself; omni detects
# TPU_WORKER_HOSTNAMES and calls it. WORKDIR should be shared storage (a gs:// bucket or NFS).
set -euo pipefail
tpu=$1; zone=$2
gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" --worker=all --command "
  cd ~/omni && source .venv/bin/activate &&
  omni train --config configs/base.py --workdir gs://YOUR_BUCKET/runs/base --config.mesh.fsdp=-1"
