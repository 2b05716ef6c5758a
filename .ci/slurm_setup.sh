#!/usr/bin/env bash
# A real single-node Slurm (munge + slurmctld + slurmd) for the Slurm tests, as root, without systemd.
#
#   sudo .ci/slurm_setup.sh          # idempotent; exits 0 at once when the node is already up
#   sudo .ci/slurm_teardown.sh       # stops the daemons by the pids recorded here
#
# Environment (all optional):
#   SEMI_NNUNET_SLURM_PARTITION  partition name (default: debug)
#   SEMI_NNUNET_SLURM_CPUS       CPUs to declare (default: nproc); more than nproc oversubscribes the node
#                                (SlurmdParameters=config_overrides)
#   SEMI_NNUNET_SLURM_TIMEOUT    seconds to wait for the node to become idle (default: 90)
#   SEMI_NNUNET_SLURM_CRED_EXPIRE seconds a requeued job waits before it runs again (default: 10)
#   SEMI_NNUNET_SLURM_NO_CHECK=1 skip the srun/sbatch smoke checks at the end
set -euo pipefail

RUN_DIR=/run/semi_nnunet_slurm          # pid files (read by slurm_teardown.sh)
CONF=/etc/slurm/slurm.conf
LOG_DIR=/var/log/slurm
STATE_DIR=/var/spool/slurmctld
SPOOL_DIR=/var/spool/slurmd
PARTITION=${SEMI_NNUNET_SLURM_PARTITION:-debug}
TIMEOUT=${SEMI_NNUNET_SLURM_TIMEOUT:-90}
CRED_EXPIRE=${SEMI_NNUNET_SLURM_CRED_EXPIRE:-10}
T0=$(date +%s)

say() { printf '[slurm_setup +%ss] %s\n' "$(($(date +%s) - T0))" "$*"; }
die() { printf '[slurm_setup] ERROR: %s\n' "$*" >&2; exit 1; }

# The node's state as sinfo prints it ("idle", "mixed", "down*", ...); empty when slurmctld does not answer.
node_states() { timeout 15 sinfo -h -o %T 2>/dev/null || true; }
# True when some node is usable: idle/mixed/allocated/completing, and not "not responding" (trailing '*').
node_up() { node_states | grep -Eq '^(idle|mixed|allocated|completing)([^*]*)$'; }

# ---- already running? ---------------------------------------------------------------------------------------
# (When slurm.conf is ours and the slurmctld it recorded is gone, skip sinfo: it takes ~10 s to give up.)
ours_down=0
if grep -qs 'semi_nnunet .ci/slurm_setup.sh' "$CONF"; then
    pid=$(cat "$RUN_DIR/slurmctld.pid" 2>/dev/null | tr -dc 0-9 || true)
    [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = slurmctld ] || ours_down=1
fi
if [ "$ours_down" = 0 ] && command -v sinfo >/dev/null 2>&1 && node_up; then
    say "Slurm is already up: node state $(node_states | paste -sd, -), partition(s) $(sinfo -h -o %P | paste -sd, -)"
    exit 0
fi

[ "$(id -u)" = 0 ] || die "Slurm is not running and starting it needs root: run 'sudo $0'"

# ---- packages -----------------------------------------------------------------------------------------------
missing=()
for pkg in munge slurmctld slurmd slurm-client; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]} (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    # Refresh the lists only when apt cannot find a candidate (a fresh container has none).
    if ! apt-cache policy "${missing[@]}" 2>/dev/null | grep -q 'Candidate: [0-9]'; then
        apt-get update -q >/dev/null || die "apt-get update failed (no network? no mirror under /etc/apt?)"
    fi
    apt-get install -y -q --no-install-recommends "${missing[@]}" >/tmp/semi_nnunet_slurm_apt.log 2>&1 \
        || { tail -n 30 /tmp/semi_nnunet_slurm_apt.log >&2; die "apt-get install ${missing[*]} failed"; }
    say "packages installed"
else
    say "packages already installed"
fi

# ---- helpers for the daemons --------------------------------------------------------------------------------
mkdir -p "$RUN_DIR"
# pid_alive <pidfile> <comm>: the recorded pid exists and is the expected program (not a recycled pid).
pid_alive() {
    local f=$1 comm=$2 pid
    [ -s "$f" ] || return 1
    pid=$(tr -dc '0-9' <"$f")
    [ -n "$pid" ] && [ -r "/proc/$pid/comm" ] && [ "$(cat "/proc/$pid/comm")" = "$comm" ]
}
wait_for_file() {  # wait_for_file <file> <seconds>
    local i
    for ((i = 0; i < $2 * 10; i++)); do [ -s "$1" ] && return 0; sleep 0.1; done
    return 1
}

# ---- munge --------------------------------------------------------------------------------------------------
for d in /etc/munge /var/lib/munge /var/log/munge /run/munge; do
    mkdir -p "$d"; chown munge:munge "$d"
done
chmod 0700 /etc/munge /var/lib/munge /var/log/munge; chmod 0755 /run/munge
if [ ! -s /etc/munge/munge.key ]; then
    say "writing /etc/munge/munge.key"
    (umask 077; dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none)
fi
chown munge:munge /etc/munge/munge.key; chmod 0400 /etc/munge/munge.key

if pid_alive "$RUN_DIR/munged.pid" munged; then
    say "munged already running (pid $(cat "$RUN_DIR/munged.pid"))"
else
    rm -f /run/munge/munged.pid
    runuser -u munge -- /usr/sbin/munged || die "munged did not start (see /var/log/munge/munged.log)"
    wait_for_file /run/munge/munged.pid 10 || die "munged wrote no pid file"
    cp /run/munge/munged.pid "$RUN_DIR/munged.pid"
    say "munged started (pid $(cat "$RUN_DIR/munged.pid"))"
fi
munge -n | unmunge >/dev/null 2>&1 || die "munge -n | unmunge fails (see /var/log/munge/munged.log)"

# ---- slurm.conf ---------------------------------------------------------------------------------------------
HOST=$(hostname -s)
ADDR=$(getent hosts "$HOST" | awk '{print $1; exit}')
[ -n "$ADDR" ] || ADDR=127.0.0.1
NPROC=$(nproc)
CPUS=${SEMI_NNUNET_SLURM_CPUS:-$NPROC}
MEM_TOTAL=$(free -m | awk '/^Mem:/ {print $2}')
REAL_MEM=$((MEM_TOTAL - (MEM_TOTAL / 20 > 256 ? MEM_TOTAL / 20 : 256)))   # a little below `free -m`
DEF_MEM=$((REAL_MEM / CPUS))   # per CPU; without it a job without --mem would take the whole node's memory
OVERRIDES=""
[ "$CPUS" -gt "$NPROC" ] && OVERRIDES="SlurmdParameters=config_overrides"

mkdir -p /etc/slurm "$LOG_DIR" "$STATE_DIR" "$SPOOL_DIR"
NEW_CONF=$(mktemp)
cat >"$NEW_CONF" <<EOF
# Written by semi_nnunet .ci/slurm_setup.sh: a single-node Slurm for CI, inside a container, without systemd.
ClusterName=semi-nnunet-ci
SlurmctldHost=$HOST($ADDR)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# Requeued jobs wait cred_expire seconds before they start again (Slurm's default: 120).
AuthInfo=cred_expire=$CRED_EXPIRE
MailProg=/bin/true
MpiDefault=none
SwitchType=switch/none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
PropagateResourceLimits=NONE
SlurmctldPidFile=$RUN_DIR/slurmctld.pid
SlurmdPidFile=$RUN_DIR/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
StateSaveLocation=$STATE_DIR
SlurmdSpoolDir=$SPOOL_DIR
ReturnToService=2
$OVERRIDES
# Scheduling: start jobs at once; batch jobs are requeueable (scontrol requeue, node failure).
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=2,sched_min_interval=100000
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$DEF_MEM
JobRequeue=1
MaxJobCount=50000
MinJobAge=120
KillWait=5
UnkillableStepTimeout=30
InactiveLimit=0
OverTimeLimit=0
Waittime=0
MessageTimeout=10
SlurmctldTimeout=30
SlurmdTimeout=30
# No accounting: read job states with squeue / scontrol show job.
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
NodeName=$HOST NodeAddr=$ADDR CPUs=$CPUS RealMemory=$REAL_MEM State=UNKNOWN
PartitionName=$PARTITION Nodes=$HOST Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
CONF_CHANGED=0
if ! cmp -s "$NEW_CONF" "$CONF"; then
    [ -f "$CONF" ] && ! grep -q 'semi_nnunet .ci/slurm_setup.sh' "$CONF" && cp "$CONF" "$CONF.orig.$(date +%s)"
    install -m 0644 "$NEW_CONF" "$CONF"
    CONF_CHANGED=1
    say "wrote $CONF (node $HOST, $CPUS CPUs, RealMemory=${REAL_MEM}M, partition $PARTITION)"
fi
rm -f "$NEW_CONF"

# ---- slurmctld, slurmd --------------------------------------------------------------------------------------
start_daemon() {  # start_daemon <name>
    local name=$1 pidfile="$RUN_DIR/$1.pid"
    if pid_alive "$pidfile" "$name"; then
        say "$name already running (pid $(cat "$pidfile"))"
        return 1
    fi
    rm -f "$pidfile"
    "/usr/sbin/$name" || die "$name did not start (see $LOG_DIR/$name.log)"
    wait_for_file "$pidfile" 15 || die "$name wrote no pid file $pidfile (see $LOG_DIR/$name.log)"
    say "$name started (pid $(cat "$pidfile"))"
}
restarted=0
start_daemon slurmctld && restarted=1 || true
# wait until slurmctld answers before starting slurmd
for ((i = 0; i < 150; i++)); do timeout 5 scontrol ping 2>/dev/null | grep -q UP && break; sleep 0.2; done
timeout 5 scontrol ping 2>/dev/null | grep -q UP || { tail -n 20 "$LOG_DIR/slurmctld.log" >&2; die "slurmctld does not answer"; }
start_daemon slurmd || true
if [ "$CONF_CHANGED" = 1 ] && [ "$restarted" = 0 ]; then
    say "slurm.conf changed while slurmctld was running: scontrol reconfigure"
    scontrol reconfigure || true
fi

# ---- wait for the node --------------------------------------------------------------------------------------
resumed=0
while ! node_up; do
    state=$(node_states | head -n 1)
    if [ "$resumed" = 0 ] && [[ "$state" =~ ^(down|drain|drained|draining)$ ]]; then
        say "node is $state: scontrol update NodeName=$HOST State=RESUME"
        scontrol update NodeName="$HOST" State=RESUME || true
        resumed=1
    fi
    if [ $(($(date +%s) - T0)) -gt "$TIMEOUT" ]; then
        sinfo -R >&2 || true
        tail -n 20 "$LOG_DIR/slurmctld.log" "$LOG_DIR/slurmd.log" >&2 || true
        die "the node is not idle after ${TIMEOUT}s (state: '${state:-no answer}')"
    fi
    sleep 0.5
done
say "node $HOST is $(node_states | head -n 1) (partition $PARTITION)"

# ---- smoke checks -------------------------------------------------------------------------------------------
if [ "${SEMI_NNUNET_SLURM_NO_CHECK:-0}" != 1 ]; then
    out=$(timeout 60 srun -N1 hostname) || die "srun -N1 hostname failed"
    say "srun -N1 hostname -> $out"
    work=$(mktemp -d /tmp/semi_nnunet_slurm_check.XXXXXX)
    first=$(sbatch --parsable -D "$work" -o first.out -J ci-first --wrap 'sleep 1; echo first > first.done')
    timeout 120 sbatch --wait -D "$work" -o second.out -J ci-second --dependency="afterok:$first" \
        --wrap 'test -f first.done && echo second > second.done' >/dev/null \
        || die "sbatch --wait with --dependency=afterok:$first failed (see $work)"
    [ -f "$work/first.done" ] && [ -f "$work/second.done" ] || die "the sbatch jobs did not write their files ($work)"
    rm -rf "$work"
    say "sbatch --wait job with --dependency=afterok:$first ran after it"
fi
say "Slurm is up"
