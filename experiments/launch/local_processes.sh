#!/bin/bash
# N processes of one run on this machine, as a cluster would start them: a rehearsal of a
# multi-host launch on a laptop (CPU: each process gets DEVICES virtual devices).
#
#   bash experiments/launch/local_processes.sh 2 --config configs/sst2.py:quick --workdir runs/q2
#
# Process i's output goes to <workdir>.p<i>.log; process 0 also writes the workdir as usual.
# Ctrl-C (or kill -TERM of any of them) stops all of them at one step with a checkpoint. When
# one process fails, the others are stopped (SIGTERM, then SIGKILL after GRACE seconds) and the
# script exits with the first failure's code (75 is no failure: all processes stop together).
set -u
N=$1; shift
DEVICES=${DEVICES:-1}
PORT=${PORT:-$((20000 + RANDOM % 20000))}
GRACE=${GRACE:-120}
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
codes=()  # exit code of process i, once it has ended
failed="" stop_at=""
while true; do
  running=0
  for ((i = 0; i < N; i++)); do
    [ -n "${codes[$i]:-}" ] && continue
    if kill -0 "${pids[$i]}" 2>/dev/null; then running=$((running + 1)); continue; fi
    wait "${pids[$i]}"; codes[$i]=$?
    # 75: stopped by a signal with a checkpoint, as every process does at the same step
    if [ "${codes[$i]}" -ne 0 ] && [ "${codes[$i]}" -ne 75 ] && [ -z "$failed" ]; then
      failed=$i
      echo "process $i failed (exit code ${codes[$i]}): $(tail -n 1 "$workdir.p$i.log")" >&2
      echo "stopping the other processes" >&2
      kill -TERM "${pids[@]}" 2>/dev/null
      stop_at=$((SECONDS + GRACE))
    fi
  done
  [ "$running" -eq 0 ] && break
  if [ -n "$stop_at" ] && [ "$SECONDS" -ge "$stop_at" ]; then
    kill -KILL "${pids[@]}" 2>/dev/null
  fi
  sleep 0.5
done
all=(); for ((i = 0; i < N; i++)); do all+=("${codes[$i]}"); done
echo "exit codes: ${all[*]} (logs: $workdir.p<i>.log)"
if [ -n "$failed" ]; then exit "${codes[$failed]}"; fi
for c in "${all[@]}"; do [ "$c" -ne 0 ] && exit "$c"; done
exit 0
