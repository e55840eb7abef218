#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, for the Slurm tests (root only).
#   scripts/slurm-cluster.sh start DIR   installs slurm-wlm and munge when missing (Debian's, pinned
#                                        to the release's own), writes DIR/slurm.conf for this
#                                        machine's CPUs and memory, starts munged, slurmctld and
#                                        slurmd with their state under DIR, waits for the node
#   scripts/slurm-cluster.sh stop DIR    stops the three daemons (by their pid files under DIR)
# Commands talk to it with SLURM_CONF=DIR/slurm.conf.
set -euo pipefail
cmd=${1:?usage: slurm-cluster.sh start|stop DIR}
dir=${2:?usage: slurm-cluster.sh start|stop DIR}

stop() {
    for p in slurmd slurmctld munged; do
        if [ -f "$dir/$p.pid" ]; then
            kill "$(cat "$dir/$p.pid")" 2>/dev/null || true
        fi
    done
    for p in slurmd slurmctld munged; do
        for _ in $(seq 50); do
            [ -f "$dir/$p.pid" ] && kill -0 "$(cat "$dir/$p.pid")" 2>/dev/null || break
            sleep 0.1
        done
        rm -f "$dir/$p.pid"
    done
}

case "$cmd" in
stop) stop; exit 0 ;;
start) ;;
*) echo "slurm-cluster.sh: unknown command '$cmd' (expected start or stop)" >&2; exit 2 ;;
esac

if [ "$(id -u)" != 0 ]; then
    echo "slurm-cluster.sh: needs root (to install and run slurmctld/slurmd)" >&2
    exit 3
fi
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends slurm-wlm munge >/dev/null 2>&1 ||
        { apt-get update >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends slurm-wlm munge >/dev/null; }
fi

mkdir -p "$dir/ctld" "$dir/d"
stop
# munged with a key and socket of its own, so a system munge (if any) is left alone.
if [ ! -f "$dir/munge.key" ]; then
    head -c 1024 /dev/urandom > "$dir/munge.key"
    chmod 400 "$dir/munge.key"
fi
munged --force --key-file="$dir/munge.key" --socket="$dir/munge.sock" \
    --pid-file="$dir/munged.pid" --log-file="$dir/munged.log" --seed-file="$dir/munged.seed"

host=$(hostname -s)
cpus=$(nproc)
mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 512 ))
cat > "$dir/slurm.conf" <<CONF
ClusterName=aligngym-test
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$dir/munge.sock
CredType=cred/munge
StateSaveLocation=$dir/ctld
SlurmdSpoolDir=$dir/d
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
SlurmctldPort=${SLURMCTLD_PORT:-6817}
SlurmdPort=${SLURMD_PORT:-6818}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=1
ReturnToService=2
MpiDefault=none
MinJobAge=600
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
export SLURM_CONF="$dir/slurm.conf"
slurmctld -f "$dir/slurm.conf"
slurmd -f "$dir/slurm.conf"
for _ in $(seq 100); do
    if sinfo -h -o '%T' 2>/dev/null | grep -qx idle; then
        echo "slurm: one node ($host, $cpus CPUs, $mem MB) up; SLURM_CONF=$dir/slurm.conf"
        exit 0
    fi
    sleep 0.2
done
echo "slurm-cluster.sh: the node did not come up; logs in $dir (slurmctld.log, slurmd.log)" >&2
tail -5 "$dir/slurmctld.log" "$dir/slurmd.log" >&2 || true
exit 1
