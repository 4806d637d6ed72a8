#!/usr/bin/env bash
# Run llada-jax on a Cloud TPU VM pod slice: create (or reuse) the slice, put the code and its
# install on every worker, run the same command on all workers (--worker=all), collect logs.
#
#   export TPU_NAME=llada-v5p ZONE=us-east5-a PROJECT=my-project ACCELERATOR=v5p-128
#   launch/tpu_pod.sh create                 # create the slice, or reuse it if it exists
#   launch/tpu_pod.sh setup                  # copy this checkout to every worker, pip install '.[tpu]'
#   launch/tpu_pod.sh run pretrain --distributed on --config configs/llada-8b-v5p-pod.yaml data.files=[gs://b/corpus/*.jsonl] \
#       train.tokenizer=gs://b/tokenizer.json train.checkpoint_dir=gs://b/runs/8b
#   launch/tpu_pod.sh logs                   # last lines of every worker's log
#   launch/tpu_pod.sh stop | delete
#
# `run` starts the job detached (nohup) on every worker, logging to ~/llada-logs/<worker>.log.
# `--distributed on` starts jax.distributed on every worker (JAX finds the pod's workers through
# the TPU VM metadata; no coordinator flags). Re-running the
# same `run` command after a preemption resumes from the latest checkpoint in checkpoint_dir
# (use a gs:// bucket so every worker and the next slice see it).
set -euo pipefail

TPU_NAME=${TPU_NAME:?set TPU_NAME}
ZONE=${ZONE:?set ZONE}
PROJECT=${PROJECT:-$(gcloud config get-value project 2>/dev/null)}
ACCELERATOR=${ACCELERATOR:-v5p-128}
RUNTIME_VERSION=${RUNTIME_VERSION:-v2-alpha-tpuv5}   # v5e: v2-alpha-tpuv5-lite
SPOT=${SPOT:-}                                       # set SPOT=1 for a preemptible (spot) slice
REMOTE_DIR=${REMOTE_DIR:-llada-jax}
LOG_DIR=${LOG_DIR:-llada-logs}

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
gtpu=(gcloud compute tpus tpu-vm --project "$PROJECT" --zone "$ZONE")

ssh_all() { "${gtpu[@]}" ssh "$TPU_NAME" --worker=all --command "$1"; }

cmd=${1:-help}
shift || true
case "$cmd" in
  create)
    if "${gtpu[@]}" describe "$TPU_NAME" >/dev/null 2>&1; then
      echo "reusing TPU slice $TPU_NAME ($("${gtpu[@]}" describe "$TPU_NAME" --format='value(state)'))"
    else
      "${gtpu[@]}" create "$TPU_NAME" --accelerator-type "$ACCELERATOR" --version "$RUNTIME_VERSION" \
        ${SPOT:+--spot}
    fi
    ;;
  setup)
    archive=$(mktemp /tmp/llada-jax.XXXXXX.tar.gz)
    git -C "$here" ls-files -z | tar -C "$here" --null -T - -czf "$archive"
    "${gtpu[@]}" scp "$archive" "$TPU_NAME:/tmp/llada-jax.tar.gz" --worker=all
    rm -f "$archive"
    ssh_all "set -e; mkdir -p ~/$REMOTE_DIR ~/$LOG_DIR && tar -xzf /tmp/llada-jax.tar.gz -C ~/$REMOTE_DIR && \
      cd ~/$REMOTE_DIR && (test -d .venv || python3 -m venv .venv) && .venv/bin/pip install -q -U pip && \
      .venv/bin/pip install -q -e '.[tpu]' && .venv/bin/python -c 'import jax; print(jax.process_index(), jax.device_count())'"
    ;;
  run)
    [ $# -gt 0 ] || { echo "usage: $0 run <llada-jax subcommand and arguments>" >&2; exit 2; }
    args=$(printf '%q ' "$@")
    ssh_all "cd ~/$REMOTE_DIR && nohup .venv/bin/llada-jax $args --no-progress \
      > ~/$LOG_DIR/\$(hostname).log 2>&1 < /dev/null & echo started on \$(hostname)"
    ;;
  logs)
    ssh_all "tail -n ${LINES_PER_WORKER:-5} ~/$LOG_DIR/*.log"
    ;;
  stop)
    # SIGTERM: every worker saves a checkpoint at the next step and exits 0.
    ssh_all "pkill -TERM -f '.venv/bin/llada-jax' || true"
    ;;
  delete)
    "${gtpu[@]}" delete "$TPU_NAME" --quiet
    ;;
  *)
    sed -n '2,20p' "$0"
    ;;
esac
