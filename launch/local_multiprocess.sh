#!/usr/bin/env bash
# Several JAX processes on this host, talking over 127.0.0.1: the multi-host code
# path (process-sharded data, global arrays, cross-process collectives) on one machine.
#
#   launch/local_multiprocess.sh NUM_PROCESSES --config FILE[:ARG] --workdir DIR [...]
#
# Each process gets DEVICES_PER_PROCESS fake CPU devices (default 1). Process 0's
# output goes to the terminal, the others' to WORKDIR/process_<i>.log.
set -euo pipefail
num=${1:?usage: $0 NUM_PROCESSES --config ... --workdir DIR [flags]}
shift
port=${PORT:-$((20000 + RANDOM % 20000))}
per=${DEVICES_PER_PROCESS:-1}
workdir=""
prev=""
for arg in "$@"; do
  case "$arg" in --workdir=*) workdir=${arg#--workdir=};; esac
  [ "$prev" = "--workdir" ] && workdir=$arg
  prev=$arg
done
mkdir -p "${workdir:-.}"
pids=()
for ((i = 1; i < num; i++)); do
  XLA_FLAGS="--xla_force_host_platform_device_count=$per" JAX_PLATFORMS=cpu \
    python -m tandem.ssl.train "$@" --coordinator_address="127.0.0.1:$port" \
    --num_processes="$num" --process_id="$i" > "${workdir:-.}/process_$i.log" 2>&1 &
  pids+=($!)
done
status=0
XLA_FLAGS="--xla_force_host_platform_device_count=$per" JAX_PLATFORMS=cpu \
  python -m tandem.ssl.train "$@" --coordinator_address="127.0.0.1:$port" \
  --num_processes="$num" --process_id=0 || status=$?
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit "$status"
