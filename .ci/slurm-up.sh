#!/usr/bin/env bash
# A single-node SLURM for the tests: Debian's slurm-wlm + munge, as root, with its own state folders.
#
# Idempotent: packages are installed only when missing, and daemons already answering (sinfo shows
# the node) are left alone. Proctrack/task plugins that need no cgroups, so it runs in a container;
# ReturnToService=2 so a restarted slurmd rejoins without `scontrol update`. Returns once `sinfo`
# shows the node idle. Stop it with .ci/slurm-down.sh (same NAVCACHE_SLURM_DIR).
set -euo pipefail

STATE="${NAVCACHE_SLURM_DIR:-/tmp/navcache-slurm}"
CONF="$STATE/etc/slurm.conf"
export SLURM_CONF="$CONF"

if [ "$(id -u)" != 0 ]; then
    echo "slurm-up: needs root (installs packages, runs munged/slurmctld/slurmd)" >&2
    exit 1
fi

need=()
command -v slurmctld >/dev/null || need+=(slurm-wlm)
command -v munged >/dev/null || need+=(munge)
if [ ${#need[@]} -gt 0 ]; then
    echo "slurm-up: installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if [ -f "$CONF" ] && sinfo -h -o %t >/dev/null 2>&1 && [ -n "$(sinfo -h -o %t 2>/dev/null)" ]; then
    echo "slurm-up: already running ($CONF)"
    sinfo
    exit 0
fi

mkdir -p "$STATE"/{etc,ctld,spool,log,run,munge}
chmod 700 "$STATE/munge"

# munge: its own key, socket and pid file, so a system munged (if any) is untouched
MUNGE_SOCK="$STATE/munge/munge.socket"
if [ ! -f "$STATE/munge/munge.key" ]; then
    dd if=/dev/urandom of="$STATE/munge/munge.key" bs=1024 count=1 status=none
    chmod 400 "$STATE/munge/munge.key"
fi
if ! { [ -f "$STATE/run/munged.pid" ] && kill -0 "$(cat "$STATE/run/munged.pid")" 2>/dev/null; }; then
    munged --force --key-file="$STATE/munge/munge.key" --socket="$MUNGE_SOCK" \
        --pid-file="$STATE/run/munged.pid" --log-file="$STATE/log/munged.log" --seed-file="$STATE/munge/munge.seed"
fi

HOST="$(hostname -s)"
CPUS="$(nproc --all)"
# RealMemory in MiB, a little under MemTotal: slurmd drains a node that reports less than configured
MEM_MB="$(awk '/MemTotal/ {print int($2 / 1024 * 0.95)}' /proc/meminfo)"
PORT_BASE="${NAVCACHE_SLURM_PORT:-6817}"

cat > "$CONF" <<CONF
ClusterName=navcache
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$MUNGE_SOCK
SlurmctldPort=$PORT_BASE
SlurmdPort=$((PORT_BASE + 1))
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool/slurmd-%n
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
ReturnToService=2
MpiDefault=none
SwitchType=switch/none
MinJobAge=60
DefMemPerCPU=$((MEM_MB / CPUS))
NodeName=$HOST CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
CONF

# sbatch/squeue in any shell find this cluster: /etc/slurm/slurm.conf points here, unless the
# machine has a slurm.conf of its own (then export SLURM_CONF=$CONF)
if [ -d /etc/slurm ] && { [ ! -e /etc/slurm/slurm.conf ] || [ "$(readlink /etc/slurm/slurm.conf)" = "$CONF" ]; }; then
    ln -sfn "$CONF" /etc/slurm/slurm.conf
fi

start() {  # name, pid file, command...
    local name=$1 pidf=$2
    shift 2
    if [ -f "$pidf" ] && kill -0 "$(cat "$pidf")" 2>/dev/null; then
        return
    fi
    "$@"
}
start slurmctld "$STATE/run/slurmctld.pid" slurmctld -f "$CONF"
start slurmd "$STATE/run/slurmd.pid" slurmd -f "$CONF"

for _ in $(seq 1 60); do
    st="$(sinfo -h -N -o %t 2>/dev/null | head -1 || true)"
    case "$st" in
        idle | mix | alloc) echo "slurm-up: node $HOST $st ($CPUS CPUs, ${MEM_MB} MiB); SLURM_CONF=$CONF"; exit 0 ;;
    esac
    sleep 1
done
echo "slurm-up: node never became idle (state: ${st:-none}); logs in $STATE/log" >&2
tail -n 20 "$STATE/log/slurmctld.log" "$STATE/log/slurmd.log" >&2 || true
exit 1
