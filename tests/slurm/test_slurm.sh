#!/usr/bin/env bash
# A real single-node Slurm (slurmctld + slurmd + munge, started by hand: no systemd, no cgroups)
# runs a small experiment as a 4-task array plus the merge job; the merged table must equal the
# table of a single-process run of the same experiment.
#   tests/slurm/test_slurm.sh [build-dir]      (needs root and the slurm packages)
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
build=${1:-$here/build}
bin=$(realpath "$build/bitbench")
if [[ $(id -u) -ne 0 ]]; then echo "slurm test: SKIPPED (needs root to run munged as the munge user)"; exit 77; fi
for c in slurmctld slurmd sbatch squeue munged; do
  command -v $c >/dev/null || { echo "slurm test: missing $c (scripts/install-deps.sh installs it)" >&2; exit 1; }
done
work=$(mktemp -d /tmp/bb-slurm.XXXXXX)
pids=()
cleanup() {
  set +e
  scancel --user=root >/dev/null 2>&1
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
  sleep 1
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null; done
  rm -rf "$work"
}
trap cleanup EXIT

# munge: runtime dir, key, daemon as the munge user.
mkdir -p /run/munge && chown munge:munge /run/munge && chmod 0755 /run/munge
if [[ ! -s /etc/munge/munge.key ]]; then
  runuser -u munge -- mungekey --create --keyfile=/etc/munge/munge.key 2>/dev/null ||
    (dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null)
fi
chown munge:munge /etc/munge/munge.key && chmod 0400 /etc/munge/munge.key
if ! pgrep -x munged >/dev/null; then
  # munged runs as the munge user, which cannot write into the root-owned 0700 work folder: its
  # pid file lives in /run/munge, and the PID is read back with pgrep.
  runuser -u munge -- munged 2>"$work/munged.err" || { cat "$work/munged.err"; exit 1; }
  for i in $(seq 1 20); do pgrep -x munged >/dev/null && break; sleep 0.1; done
  mpid=$(pgrep -x munged | head -1)
  [[ -n "$mpid" ]] || { echo "slurm test: munged did not start"; cat "$work/munged.err"; exit 1; }
  pids+=("$mpid")
fi

cpus=$(nproc)
mem=$(( $(awk '/MemTotal/ {print int($2/1024)}' /proc/meminfo) * 8 / 10 ))
mkdir -p "$work"/{state,spool,log,run}
cat > "$work/slurm.conf" <<CONF
ClusterName=bitbench-test
SlurmctldHost=localhost
SlurmUser=root
SlurmctldPort=16817
SlurmdPort=16818
AuthType=auth/munge
StateSaveLocation=$work/state
SlurmdSpoolDir=$work/spool
SlurmctldPidFile=$work/run/slurmctld.pid
SlurmdPidFile=$work/run/slurmd.pid
SlurmctldLogFile=$work/log/slurmctld.log
SlurmdLogFile=$work/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerParameters=batch_sched_delay=0
MailProg=/bin/true
MinJobAge=300
ReturnToService=2
NodeName=bbnode NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
export SLURM_CONF=$work/slurm.conf
slurmctld -f "$SLURM_CONF"
sleep 0.5; pids+=("$(cat "$work/run/slurmctld.pid")")
slurmd -f "$SLURM_CONF" -N bbnode
sleep 0.5; pids+=("$(cat "$work/run/slurmd.pid")")
for i in $(seq 1 60); do
  st=$(sinfo -h -n bbnode -o %T 2>/dev/null || true)
  [[ "$st" == idle* ]] && break
  [[ "$st" == inval* || "$st" == drain* ]] && { echo "slurm node state $st"; tail -20 "$work/log/slurmd.log"; exit 1; }
  sleep 0.5
done
[[ "$(sinfo -h -n bbnode -o %T)" == idle* ]] || { echo "slurm node never became idle"; tail -20 "$work/log/slurmctld.log"; exit 1; }
echo "slurm test: slurmctld + slurmd up ($cpus CPUs)"

# A small experiment: 5 runs on 200 images.
cat > "$work/exp.yaml" <<YAML
experiment: slurm_smoke
models: [cifar_resnet20]
eval: [cifar10-lossless-1k]
eval_limit: 200
runs:
  - method: fp32
  - method: uniform
    grid: {bits: [2, 3, 4, 8]}
YAML
export BITBENCH_THREADS=1
BITBENCH_RESULTS=$work/slurm-results BITBENCH_BIN=$bin "$here/scripts/slurm/sweep.sh" "$work/exp.yaml" 4 --cpus-per-task=1
read -r array merge < "$work/slurm-results/slurm_smoke/logs/jobs"
for i in $(seq 1 600); do
  [[ -z "$(squeue -h -j "$array,$merge" 2>/dev/null)" ]] && break
  sleep 1
done
[[ -z "$(squeue -h -j "$array,$merge" 2>/dev/null)" ]] || { echo "slurm jobs did not finish"; exit 1; }
for t in 0 1 2 3; do
  state=$(scontrol -o show job "${array}_$t" 2>/dev/null | grep -o 'JobState=[A-Z]*' | head -1)
  echo "slurm test: array task $t $state"
  [[ "$state" == "JobState=COMPLETED" ]] || { cat "$work/slurm-results/slurm_smoke/logs/shard-$t.out"; exit 1; }
done
n=$(ls "$work/slurm-results/slurm_smoke/runs/"*.json | grep -vc failed)
[[ $n -eq 5 ]] || { echo "expected 5 run records, found $n"; exit 1; }
[[ -f "$work/slurm-results/slurm_smoke/table.json" ]] || { cat "$work/slurm-results/slurm_smoke/logs/merge.out"; exit 1; }

# The same experiment in one process.
BITBENCH_RESULTS=$work/local-results "$bin" run "$work/exp.yaml" 2>/dev/null
"$bin" table "$work/local-results/slurm_smoke" --quiet --no-plots >/dev/null
/usr/bin/python3 - "$work/slurm-results/slurm_smoke/table.json" "$work/local-results/slurm_smoke/table.json" <<'PY'
import json, sys
def rows(p):
    t = json.load(open(p))
    out = []
    for m, v in sorted(t["models"].items()):
        for r in v["rows"]:
            r = {k: x for k, x in r.items() if k not in ("wall_seconds",)}
            out.append((m, json.dumps(r, sort_keys=True)))
    return sorted(out)
a, b = rows(sys.argv[1]), rows(sys.argv[2])
assert len(a) == 5, len(a)
assert a == b, "slurm table differs from the single-process table"
print("slurm test: merged table of the 4-task array equals the single-process table (%d rows)" % len(a))
PY
echo "slurm test: PASSED"
