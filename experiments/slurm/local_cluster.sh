#!/bin/bash
# A one-node SLURM cluster on this machine, for testing the sbatch templates (needs root and Debian's
# slurmd, slurmctld, slurm-client and munge packages: apt-get install slurmd slurmctld slurm-client munge).
#   experiments/slurm/local_cluster.sh start     # writes /tmp/msds-slurm/slurm.conf, starts munged, slurmctld, slurmd
#   export SLURM_CONF=/tmp/msds-slurm/slurm.conf; sbatch ...; squeue
#   experiments/slurm/local_cluster.sh stop
set -euo pipefail
DIR=${MSDS_SLURM_DIR:-/tmp/msds-slurm}
case "${1:-}" in
start)
    mkdir -p "$DIR"/{state,spool,log} /etc/munge /run/munge /var/lib/munge /var/log/munge
    [ -s /etc/munge/munge.key ] || dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
    chmod 400 /etc/munge/munge.key
    pgrep -x munged >/dev/null || munged --force
    host=$(hostname -s)
    cpus=$(nproc)
    mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
    cat > "$DIR/slurm.conf" <<CONF
ClusterName=msds-local
SlurmctldHost=$host
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
ReturnToService=2
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
KillWait=5
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
CONF
    export SLURM_CONF="$DIR/slurm.conf"
    pgrep -x slurmctld >/dev/null || slurmctld -c -f "$SLURM_CONF"
    pgrep -x slurmd >/dev/null || slurmd -f "$SLURM_CONF"
    for _ in $(seq 30); do sinfo -h -o %T 2>/dev/null | grep -qE "idle|mixed" && break; sleep 1; done
    sinfo
    echo "export SLURM_CONF=$SLURM_CONF"
    ;;
stop)
    pkill -x slurmd || true
    pkill -x slurmctld || true
    ;;
*)
    echo "usage: $0 start|stop" >&2
    exit 2
    ;;
esac
