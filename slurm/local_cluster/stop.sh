#!/usr/bin/env bash
# Stop the single-node SLURM started by start.sh: slurmd, slurmctld, slurmdbd, MariaDB, munged (in that order).
# Each daemon is stopped by the pid in its own pid file only. Queued jobs survive in the state folder.
set -uo pipefail

STATE=${BENCH_SLURM_DIR:-/var/lib/bench-slurm}

stop_pidfile() {  # stop_pidfile NAME PIDFILE: SIGTERM, then wait up to 30 s, then SIGKILL
    local name=$1 pidfile=$2 pid
    if [ ! -s "$pidfile" ] || ! kill -0 "$(cat "$pidfile")" 2>/dev/null; then
        echo "stop.sh: $name not running"
        return 0
    fi
    pid=$(cat "$pidfile")
    kill "$pid"
    for _ in $(seq 60); do
        kill -0 "$pid" 2>/dev/null || { echo "stop.sh: $name stopped"; return 0; }
        sleep 0.5
    done
    kill -9 "$pid" 2>/dev/null
    echo "stop.sh: $name killed after 30 s"
}

stop_pidfile slurmd "$STATE/run/slurmd.pid"
stop_pidfile slurmctld "$STATE/run/slurmctld.pid"
stop_pidfile slurmdbd "$STATE/run/slurmdbd.pid"
stop_pidfile mariadbd /run/mysqld/mysqld.pid
stop_pidfile munged /run/munge/munged.pid
