#!/bin/bash
# N processes of one run on this machine, as a cluster would start them: a rehearsal of a
# multi-host launch on a laptop (CPU: each process gets DEVICES virtual devices).
#
#   bash experiments/launch/local_processes.sh 2 --config configs/sst2.py:quick --workdir runs/q2
#
# Process i's output goes to <workdir>.p<i>.log; process 0 also writes the workdir as usual.
# Ctrl-C (or kill -TERM of any of them) stops all of them at one step with a checkpoint.
set -u
N=$1; shift
DEVICES=${DEVICES:-1}
PORT=${PORT:-$((20000 + RANDOM % 20000))}
workdir=""
for ((i = 1; i <= $#; i++)); do
  if [ "${!i}" = "--workdir" ]; then j=$((i + 1)); workdir=${!j}; fi
  case "${!i}" in --workdir=*) workdir=${!i#--workdir=};; esac
done
: "${workdir:?give --workdir}"
mkdir -p "$(dirname "$workdir")"
pids=()
for ((i = 0; i < N; i++)); do
  XLA_FLAGS="--xla_force_host_platform_device_count=$DEVICES ${XLA_FLAGS:-}" \
    python -m research.main "$@" --coordinator_address="127.0.0.1:$PORT" \
    --num_processes="$N" --process_id="$i" > "$workdir.p$i.log" 2>&1 &
  pids+=($!)
done
trap 'kill -TERM "${pids[@]}" 2>/dev/null' INT TERM
codes=()
for pid in "${pids[@]}"; do
  wait "$pid"; code=$?
  while [ "$code" -gt 128 ] && kill -0 "$pid" 2>/dev/null; do wait "$pid"; code=$?; done
  codes+=("$code")
done
echo "exit codes: ${codes[*]} (logs: $workdir.p<i>.log)"
for c in "${codes[@]}"; do [ "$c" -ne 0 ] && exit "$c"; done
exit 0
