#!/usr/bin/env bash
# Stop the test SLURM started by .ci/slurm-up.sh, by its pid files (same NAVCACHE_SLURM_DIR).
# Jobs still queued are lost with the controller's state folder kept for inspection (logs in log/).
set -uo pipefail

STATE="${NAVCACHE_SLURM_DIR:-/tmp/navcache-slurm}"

stop() {  # name, pid file
    local name=$1 pidf=$2 pid
    [ -f "$pidf" ] || return 0
    pid="$(cat "$pidf")"
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid"
        for _ in $(seq 1 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.2
        done
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
        echo "slurm-down: stopped $name ($pid)"
    fi
    rm -f "$pidf"
}
stop slurmd "$STATE/run/slurmd.pid"
stop slurmctld "$STATE/run/slurmctld.pid"
stop munged "$STATE/run/munged.pid"
if [ "$(readlink /etc/slurm/slurm.conf 2>/dev/null)" = "$STATE/etc/slurm.conf" ]; then
    rm -f /etc/slurm/slurm.conf
fi
exit 0
