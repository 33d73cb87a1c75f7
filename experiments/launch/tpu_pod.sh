#!/bin/bash
# One config on every host of a Cloud TPU pod slice (e.g. v4-32: 4 hosts x 4 chips).
#
#   TPU=my-v4-32 ZONE=us-central2-b bash experiments/launch/tpu_pod.sh
#
# The same command runs on every host (--worker=all); `research.main` recognises a Cloud TPU VM
# and calls jax.distributed.initialize(), which finds the other hosts by itself. The repository
# and its venv must be at the same path on every host, and the workdir on a filesystem every
# host mounts (Filestore/NFS; the workdir is a local path, not gs://). A spot/preemptible slice
# gets SIGTERM before it is taken away: the run saves a checkpoint and exits with 75; rerun this
# script on the new slice to resume.
set -eu
: "${TPU:?set TPU to the TPU VM name}" "${ZONE:?set ZONE}"
WORKDIR=${WORKDIR:-/mnt/shared/runs/sst2_bert_base}
gcloud compute tpus tpu-vm ssh "$TPU" --zone="$ZONE" --worker=all --command="
  cd ~/research && source .venv/bin/activate &&
  python -m research.main --config configs/sst2.py --workdir $WORKDIR \
      --config.model.checkpoint=bert-base-uncased --config.model.dtype=bfloat16 \
      --config.train.batch_size=256 --config.checkpoint.every_seconds=1800"
