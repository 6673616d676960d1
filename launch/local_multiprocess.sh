#!/usr/bin/env bash
# Several JAX processes on this host, talking over 127.0.0.1: the multi-host code
# path (process-sharded data, global arrays, cross-process collectives) on one machine.
#
#   launch/local_multiprocess.sh NUM_PROCESSES --config FILE[:ARG] --workdir DIR [...]
#
# Each process gets DEVICES_PER_PROCESS fake CPU devices (default 1). Process 0's
# output goes to the terminal, the others' to WORKDIR/process_<i>.log.
# If a process dies, the others stop within --heartbeat_timeout_s (JAX's
# coordination service aborts them); this script then says which process failed
# first and exits non-zero. SIGTERM, SIGINT (Ctrl-C) or SIGHUP to this script is
# passed to every process once (each runs in its own session, so a signal to the
# terminal's or the script's process group reaches them only through here): they
# agree on a step, save a checkpoint there and exit. Running the same command
# again resumes from the last checkpoint in WORKDIR.
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
# The caller's XLA flags, with this script's device count instead of theirs.
xla_flags="$(printf '%s\n' ${XLA_FLAGS:-} | \
  { grep -v '^--xla_force_host_platform_device_count' || true; } | tr '\n' ' ')"
xla_flags="${xla_flags}--xla_force_host_platform_device_count=$per"
pids=()
start() {  # Process $1 (exec: the pid is the trainer's), in a session of its own.
  XLA_FLAGS="$xla_flags" JAX_PLATFORMS=cpu \
    exec setsid -w python -m tandem.ssl.train "${args[@]}" \
    --coordinator_address="127.0.0.1:$port" --num_processes="$num" --process_id="$1"
}
args=("$@")
start 0 &  # Its output to the terminal; the others' appended to their logs.
pids+=($!)
for ((i = 1; i < num; i++)); do
  start "$i" >> "${workdir:-.}/process_$i.log" 2>&1 &
  pids+=($!)
done
forward() {
  echo "local_multiprocess.sh: SIG$1: passing it to the $num processes, which save" \
       "a checkpoint and stop." >&2
  kill -s "$1" "${pids[@]}" 2>/dev/null || true
}
for sig in TERM INT HUP; do trap "forward $sig" "$sig"; done
status=0
codes=()
for pid in "${pids[@]}"; do
  while true; do  # `wait` returns early when a trapped signal arrives.
    code=0
    wait "$pid" || code=$?
    kill -0 "$pid" 2>/dev/null || break
  done
  codes+=("$code")
  if [ "$code" != 0 ] && [ "$status" = 0 ]; then status=$code; fi
done
if [ "$status" != 0 ]; then
  describe() {  # An exit status in words.
    case $1 in
      0) echo "finished";;
      134) echo "aborted (134): JAX stopped it because another process died";;
      137) echo "killed (137, SIGKILL: out of memory, or killed by hand)";;
      *) if [ "$1" -gt 128 ]; then echo "stopped by signal $(($1 - 128)) ($1)";
         else echo "failed with exit status $1"; fi;;
    esac
  }
  {
    echo "local_multiprocess.sh: the run did not finish:"
    for i in "${!codes[@]}"; do
      log="the terminal"; [ "$i" -gt 0 ] && log="${workdir:-.}/process_$i.log"
      echo "  process $i $(describe "${codes[$i]}"); its output: $log"
    done
    echo "Run the same command again to resume from the last checkpoint in" \
         "${workdir:-.}."
  } >&2
fi
exit "$status"
