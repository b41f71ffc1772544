#!/usr/bin/env bash
# Where bitbench's fine-tuning time goes (a diagnostic beside bench/train_vs_pytorch.sh): runs the
# same `bitbench compress --method fp32` fine-tuning under Linux uprobes (perf probe; needs root
# and perf) on bb::finetune_shared, its per-batch step callback, torch::autograd::backward and
# torch::optim::SGD::step, and prints the wall-time split of the fine-tuning:
#   outside the step callback  = waiting for the decode threads' next batch + setup
#   forward                    = step callback minus backward minus SGD step (forward, loss,
#                                zero_grad, loss.item(), installing the weights)
#   backward, SGD step
# and each step's forward and backward seconds. The probes are removed at the end.
#
#   bench/train_split_perf.sh [BUILD_DIR]
#   env: MODEL, IMAGES, EPOCHS, BATCH, THREADS, BB_WORKERS as in bench/train_vs_pytorch.sh
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build}
BB="$(pwd)/$BUILD/bitbench"
MODEL=${MODEL:-cifar_resnet20}
IMAGES=${IMAGES:-2048}
EPOCHS=${EPOCHS:-1}
BATCH=${BATCH:-128}
THREADS=${THREADS:-$(nproc)}
BB_WORKERS=${BB_WORKERS:-0}
DATA=${BITBENCH_DATA_ROOT:-../shared/data}
WEIGHTS=$DATA/models/cifar10_${MODEL#cifar_}.pt
command -v perf >/dev/null || { echo "train_split_perf.sh: needs perf" >&2; exit 1; }
[ -x "$BB" ] || { echo "train_split_perf.sh: $BB not found" >&2; exit 1; }
TORCH=$(ldd "$BB" | awk '/libtorch_cpu/ {print $3}')
[ -n "$TORCH" ] || { echo "train_split_perf.sh: $BB does not link libtorch_cpu" >&2; exit 1; }

addr() {  # addr FILE NM_FLAGS REGEX: the address of the one defined symbol matching REGEX
  local a
  a=$(nm $2 --defined-only "$1" | awk -v re="$3" '$3 ~ re {print $1}' | head -1)
  [ -n "$a" ] || { echo "train_split_perf.sh: no symbol matching $3 in $1" >&2; exit 1; }
  printf "0x%x\n" "$((16#$a))"
}
FT=$(addr "$BB" "" '^_ZN2bb15finetune_sharedERNS_5ModelERKNS_7DatasetERNS_13SharedWeightsERKNS_15FinetuneOptionsEPS0_$')
STEP=$(addr "$BB" "" '^_ZNSt17_Function_handlerIFvRKN2bb5BatchEEZNS0_15finetune_shared.*E0_E9_M_invokeERKSt9_Any_dataS3_$')
BWD=$(addr "$TORCH" -D '^_ZN5torch8autograd8backwardERKSt6vectorIN2at6TensorESaIS3_EES7_N3c108optionalIbEEbS7_$')
SGD=$(addr "$TORCH" -D '^_ZN5torch5optim3SGD4stepESt8functionIFN2at6TensorEvEE$')

drop_probes() { perf probe -q -d 'probe_bitbench:bbsplit_*' -d 'probe_libtorch_cpu:bbsplit_*' 2>/dev/null || true; }
drop_probes
TMP=$(mktemp -d)
trap 'drop_probes; rm -rf "$TMP"' EXIT
perf probe -q -x "$BB" -a "bbsplit_ft=$FT" -a "bbsplit_ftr=$FT%return" -a "bbsplit_step=$STEP" -a "bbsplit_stepr=$STEP%return"
perf probe -q -x "$TORCH" -a "bbsplit_bwd=$BWD" -a "bbsplit_bwdr=$BWD%return" -a "bbsplit_sgd=$SGD" -a "bbsplit_sgdr=$SGD%return"
echo "model=$MODEL images=$IMAGES epochs=$EPOCHS batch=$BATCH threads=$THREADS bitbench-decode-threads=${BB_WORKERS/#0/default} load=$(cut -d' ' -f1-3 /proc/loadavg)"
BITBENCH_THREADS=$THREADS BITBENCH_DECODE_THREADS=$BB_WORKERS perf record -q -o "$TMP/perf.data" \
  -e 'probe_bitbench:bbsplit_*' -e 'probe_libtorch_cpu:bbsplit_*' -- \
  "$BB" compress --method fp32 --set finetune_epochs="$EPOCHS" --set finetune_max_images="$IMAGES" \
  --set finetune_batch="$BATCH" --model "$MODEL" --weights "$WEIGHTS" --calib cifar10-jpeg-train \
  --out "$TMP/fp32.bbz" --json >"$TMP/bb.json" 2>"$TMP/bb.log"
tr '\r' '\n' <"$TMP/bb.log" | grep -h "finetune: .* steps" | sed 's/^\[bitbench\] /bitbench log: /'
perf script -i "$TMP/perf.data" 2>/dev/null | /usr/bin/python3 -c '
import re, sys
ev = []
for line in sys.stdin:
    m = re.search(r"\s(\d+)\s+\[\d+\]\s+([\d.]+):\s+probe_\w+:bbsplit_(\w+):", line)
    if m:
        ev.append((int(m.group(1)), float(m.group(2)), m.group(3).replace("__return", "")))
start, tot, per = {}, {"ft": 0.0, "step": 0.0, "bwd": 0.0, "sgd": 0.0}, []
cur = {}
for tid, t, name in ev:
    ret = name.endswith("r") and name[:-1] in tot
    base = name[:-1] if ret else name
    if not ret:
        start[(tid, base)] = t
        continue
    if (tid, base) not in start:
        continue
    d = t - start.pop((tid, base))
    tot[base] += d
    cur[base] = cur.get(base, 0.0) + d
    if base == "step":
        per.append((d - cur.get("bwd", 0.0) - cur.get("sgd", 0.0), cur.get("bwd", 0.0), cur.get("sgd", 0.0)))
        cur = {}
ft, st, bw, sg = tot["ft"], tot["step"], tot["bwd"], tot["sgd"]
if not per or ft <= 0:
    sys.exit("train_split_perf.sh: no probe events recorded")
fw = st - bw - sg
pct = lambda x: 100.0 * x / ft
print(f"fine-tuning {ft:.2f} s, {len(per)} steps: outside the step callback (waiting for batches, setup) "
      f"{ft - st:.2f} s ({pct(ft - st):.1f}%), forward+loss {fw:.2f} s ({pct(fw):.1f}%), "
      f"backward {bw:.2f} s ({pct(bw):.1f}%), SGD step {sg:.2f} s ({pct(sg):.1f}%)")
print("per step forward/backward s: " + " ".join(f"{f:.3f}/{b:.3f}" for f, b, _ in per))
'
