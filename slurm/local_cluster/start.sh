#!/usr/bin/env bash
# Start a single-node SLURM on localhost without systemd: munge, MariaDB, slurmdbd, slurmctld, slurmd.
#
# Writes /etc/slurm/slurm.conf and /etc/slurm/slurmdbd.conf (the paths every SLURM tool reads by default, so
# sbatch, sacct and submitit need no SLURM_CONF), with the node line taken from `slurmd -C`. State, logs and
# pid files go to $BENCH_SLURM_DIR (default /var/lib/bench-slurm). Idempotent: daemons already running are
# left alone. Accounting (slurmdbd + MariaDB) is part of it on purpose: without it sacct fails and every job
# state reads UNKNOWN. Stop everything with slurm/local_cluster/stop.sh. Needs root: slurmd launches jobs.
set -euo pipefail

STATE=${BENCH_SLURM_DIR:-/var/lib/bench-slurm}
CLUSTER=${BENCH_SLURM_CLUSTER:-bench}
DB_PASSWORD=${BENCH_SLURM_DB_PASSWORD:-bench-local-slurm}
CONF_DIR=/etc/slurm
HOST=$(hostname -s)

[ "$(id -u)" -eq 0 ] || { echo "start.sh: run as root (slurmd must be able to start jobs)" >&2; exit 1; }
for tool in munged mariadbd slurmdbd slurmctld slurmd sbatch; do
    command -v "$tool" >/dev/null || { echo "start.sh: $tool missing; run slurm/local_cluster/install.sh" >&2; exit 1; }
done

mkdir -p "$STATE"/{log,run,slurmctld,slurmd}
log() { echo "start.sh: $*"; }

alive() {  # alive PIDFILE: the process named in PIDFILE is running
    [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...: retry COMMAND every half second
    local seconds=$1 what=$2
    shift 2
    for _ in $(seq $((seconds * 2))); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.5
    done
    echo "start.sh: timed out after ${seconds}s waiting for $what; logs in $STATE/log" >&2
    return 1
}

# --- munge (default socket /run/munge/munge.socket.2, so no AuthInfo override is needed) ----------------
install -d -o munge -g munge -m 0755 /run/munge
if [ ! -s /etc/munge/munge.key ]; then
    mungekey --create --keyfile /etc/munge/munge.key
    chown munge:munge /etc/munge/munge.key && chmod 0400 /etc/munge/munge.key
fi
if alive /run/munge/munged.pid; then
    log "munged already running"
else
    install -o munge -g munge -m 0644 /dev/null "$STATE/log/munged.log"
    runuser -u munge -- /usr/sbin/munged --pid-file=/run/munge/munged.pid --log-file="$STATE/log/munged.log"
    wait_for 20 munged bash -c 'munge -n | unmunge'
    log "munged started"
fi

# --- MariaDB (unix socket only: no TCP port to collide with anything) -------------------------------------
install -d -o mysql -g mysql -m 0755 /run/mysqld
if [ ! -d /var/lib/mysql/mysql ]; then
    mariadb-install-db --user=mysql --datadir=/var/lib/mysql >"$STATE/log/mariadb-install.log" 2>&1
fi
if mysqladmin --socket=/run/mysqld/mysqld.sock ping >/dev/null 2>&1; then
    log "MariaDB already running"
else
    nohup /usr/sbin/mariadbd --user=mysql --datadir=/var/lib/mysql --socket=/run/mysqld/mysqld.sock \
        --pid-file=/run/mysqld/mysqld.pid --skip-networking --log-error="$STATE/log/mariadb.log" \
        >/dev/null 2>&1 &
    wait_for 60 MariaDB mysqladmin --socket=/run/mysqld/mysqld.sock ping
    log "MariaDB started"
fi
mysql --socket=/run/mysqld/mysqld.sock <<SQL
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '${DB_PASSWORD}';
ALTER USER 'slurm'@'localhost' IDENTIFIED BY '${DB_PASSWORD}';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
FLUSH PRIVILEGES;
SQL

# --- configuration ---------------------------------------------------------------------------------------
mkdir -p "$CONF_DIR"
NODE_LINE=$(slurmd -C | head -n 1)
cat >"$CONF_DIR/slurm.conf" <<CONF
# Written by slurm/local_cluster/start.sh: a one-node test cluster on localhost.
ClusterName=$CLUSTER
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/slurmctld
SlurmdSpoolDir=$STATE/slurmd
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
# no cgroups in a container: track processes by parent pid, no task binding
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
# cancelled jobs die within seconds; the scheduler looks at pending jobs every 2 s (tests wait on it)
KillWait=5
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=5
MinJobAge=300
MaxArraySize=1001
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=60
$NODE_LINE NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
cat >"$CONF_DIR/slurmdbd.conf" <<CONF
# Written by slurm/local_cluster/start.sh.
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=$DB_PASSWORD
StorageLoc=slurm_acct_db
LogFile=$STATE/log/slurmdbd.log
PidFile=$STATE/run/slurmdbd.pid
CONF
chmod 0600 "$CONF_DIR/slurmdbd.conf"

# --- slurmdbd, then the cluster's entry in the accounting database ----------------------------------------
if alive "$STATE/run/slurmdbd.pid"; then
    log "slurmdbd already running"
else
    slurmdbd
    wait_for 60 slurmdbd sacctmgr --noheader list cluster
    log "slurmdbd started"
fi
if ! sacctmgr --noheader --parsable2 list cluster format=cluster | grep -qx "$CLUSTER"; then
    sacctmgr --immediate add cluster "$CLUSTER" >/dev/null
fi

# --- slurmctld and slurmd ---------------------------------------------------------------------------------
if alive "$STATE/run/slurmctld.pid"; then
    log "slurmctld already running"
else
    slurmctld
    wait_for 60 slurmctld scontrol ping
    log "slurmctld started"
fi
if alive "$STATE/run/slurmd.pid"; then
    log "slurmd already running"
else
    slurmd
    log "slurmd started"
fi
wait_for 60 "node $HOST to be idle" bash -c "sinfo --noheader --nodes='$HOST' --format=%T | grep -Eq '^(idle|mixed|allocated)'"
scontrol update nodename="$HOST" state=resume >/dev/null 2>&1 || true
srun --immediate=60 --time=1 true
log "cluster $CLUSTER is up: $(sinfo --noheader --format='%P %D %c cpus %m MB %T')"
