#!/usr/bin/env bash
# Stops the single-node Slurm that .ci/slurm_setup.sh started: cancels the remaining jobs, then stops slurmd,
# slurmctld and munged by the pids recorded in /run/semi_nnunet_slurm (never by name).
#   SEMI_NNUNET_SLURM_KEEP_JOBS=1  do not scancel the remaining jobs first
set -uo pipefail

RUN_DIR=/run/semi_nnunet_slurm
say() { printf '[slurm_teardown] %s\n' "$*"; }

[ -d "$RUN_DIR" ] || { say "nothing to stop ($RUN_DIR does not exist)"; exit 0; }
[ "$(id -u)" = 0 ] || { say "ERROR: needs root: run 'sudo $0'" >&2; exit 1; }

# pid_of <name>: the recorded pid, when it is alive and still that program (not a recycled pid)
pid_of() {
    local f="$RUN_DIR/$1.pid" pid
    [ -s "$f" ] || return 1
    pid=$(tr -dc '0-9' <"$f")
    [ -n "$pid" ] && [ -r "/proc/$pid/comm" ] && [ "$(cat "/proc/$pid/comm")" = "$1" ] && echo "$pid"
}

if [ "${SEMI_NNUNET_SLURM_KEEP_JOBS:-0}" != 1 ] && pid_of slurmctld >/dev/null; then
    jobs=$(timeout 10 squeue -h -o %i 2>/dev/null | tr '\n' ' ')
    if [ -n "${jobs// /}" ]; then
        say "cancelling jobs: $jobs"
        # shellcheck disable=SC2086
        timeout 10 scancel $jobs || true
        for ((i = 0; i < 30; i++)); do
            [ -z "$(timeout 10 squeue -h -t PD,R,CG,S -o %i 2>/dev/null)" ] && break
            sleep 0.5
        done
    fi
fi

status=0
for name in slurmd slurmctld munged; do
    if pid=$(pid_of "$name"); then
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < 100; i++)); do [ -e "/proc/$pid" ] || break; sleep 0.1; done
        if [ -e "/proc/$pid" ]; then
            say "$name (pid $pid) did not stop after 10 s: SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            sleep 0.5
            [ -e "/proc/$pid" ] && status=1
        fi
        say "stopped $name (pid $pid)"
    else
        say "$name not running"
    fi
    rm -f "$RUN_DIR/$name.pid"
done
exit $status
