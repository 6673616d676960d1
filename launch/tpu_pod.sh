#!/usr/bin/env bash
# Pretraining on a Cloud TPU pod slice with Google's `gcloud` tooling:
#
#   launch/tpu_pod.sh --name NAME --zone ZONE --accelerator v4-32 \
#       [--version tpu-ubuntu2204-base] [--project PROJECT] \
#       [--data_dir gs://BUCKET/tfds [--prepare DATASET]] [--dry_run] \
#       -- --config configs/ssl/mae_imagenet.py:model=vit_b \
#          --workdir gs://BUCKET/runs/mae_b16
#
# 1. Creates the TPU VM (`gcloud compute tpus tpu-vm create`), or reuses it when
#    `describe` finds it.
# 2. Copies this checkout's files (tracked and untracked, not ignored) to every
#    worker (`scp --worker=all`) and sets up a venv with the package and jax[tpu]
#    on each (`ssh --worker=all`; TANDEM_TPU_INSTALL replaces the install command).
# 3. With --prepare, builds the TFDS dataset once, on worker 0, into --data_dir.
# 4. Runs `python -m tandem.ssl.train ARGS --distributed` on all workers at once:
#    JAX finds the coordinator and the process ids from the TPU metadata. The
#    workdir and data dir should be buckets (gs://): TFDS and orbax read and write
#    them directly, and every worker sees the same checkpoint.
# --dry_run prints each gcloud command instead of running it (it still asks
# `describe` whether the VM exists). Quotas, the TPU
# software version and the bucket's permissions are the project's (README,
# "Launching").
set -euo pipefail
name="" zone="" accelerator="" version="tpu-ubuntu2204-base" project=""
data_dir="" prepare="" dry_run=0
usage="usage: $0 --name NAME --zone ZONE --accelerator TYPE [--version V] \
[--project P] [--data_dir DIR [--prepare DATASET]] [--dry_run] -- TRAIN_ARGS"
while [ $# -gt 0 ]; do
  case "$1" in
    --name) name=$2; shift 2;;
    --zone) zone=$2; shift 2;;
    --accelerator) accelerator=$2; shift 2;;
    --version) version=$2; shift 2;;
    --project) project=$2; shift 2;;
    --data_dir) data_dir=$2; shift 2;;
    --prepare) prepare=$2; shift 2;;
    --dry_run) dry_run=1; shift;;
    --) shift; break;;
    *) echo "tpu_pod.sh: unknown option $1; $usage" >&2; exit 2;;
  esac
done
if [ -z "$name" ] || [ -z "$zone" ] || [ -z "$accelerator" ] || [ $# = 0 ]; then
  echo "tpu_pod.sh: $usage" >&2
  exit 2
fi
if [ -n "$prepare" ] && [ -z "$data_dir" ]; then
  echo "tpu_pod.sh: --prepare needs --data_dir (a bucket every worker reads)." >&2
  exit 2
fi
train_args=("$@")
[ -n "$data_dir" ] && train_args+=("--config.data_dir=$data_dir")

tpu=(compute tpus tpu-vm)
where=(--zone "$zone")
[ -n "$project" ] && where+=(--project "$project")
gcloud_() {  # Runs gcloud, or prints it (shell-quoted) with --dry_run.
  if [ "$dry_run" = 1 ]; then
    printf '%q ' gcloud "$@"
    echo
  else
    gcloud "$@"
  fi
}
quote() { local s; s=$(printf '%q ' "$@"); printf '%s' "${s% }"; }

# 1. The TPU VM.
# (`describe` only reads, so a dry run asks it too.)
if ! gcloud "${tpu[@]}" describe "$name" "${where[@]}" >/dev/null 2>&1; then
  gcloud_ "${tpu[@]}" create "$name" "${where[@]}" \
    --accelerator-type "$accelerator" --version "$version"
else
  echo "Reusing TPU VM $name in $zone."
fi

# 2. The code and its environment, on every worker.
root=$(cd "$(dirname "$0")/.." && pwd)
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
archive=$scratch/tandem.tar.gz
(cd "$root" && git ls-files -co --exclude-standard -z | \
  xargs -0 tar czf "$archive" --ignore-failed-read)
gcloud_ "${tpu[@]}" scp "$archive" "$name:tandem.tar.gz" "${where[@]}" --worker=all
install=${TANDEM_TPU_INSTALL:-"python3 -m venv ~/tandem_venv && ~/tandem_venv/bin/pip install -q -e ~/tandem 'jax[tpu]'"}
gcloud_ "${tpu[@]}" ssh "$name" "${where[@]}" --worker=all --command \
  "rm -rf ~/tandem && mkdir -p ~/tandem && tar xzf ~/tandem.tar.gz -C ~/tandem && $install"

# 3. The dataset, once.
if [ -n "$prepare" ]; then
  gcloud_ "${tpu[@]}" ssh "$name" "${where[@]}" --worker=0 --command \
    "cd ~/tandem && ~/tandem_venv/bin/python -m tandem.data.prepare $(quote \
--dataset "$prepare" --data_dir "$data_dir")"
fi

# 4. Training, on every worker together.
gcloud_ "${tpu[@]}" ssh "$name" "${where[@]}" --worker=all --command \
  "cd ~/tandem && ~/tandem_venv/bin/python -m tandem.ssl.train $(quote \
"${train_args[@]}") --distributed"
