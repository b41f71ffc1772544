#!/usr/bin/env bash
# Benchmark (not a test): fine-tuning (training) images/s of bitbench against the training loop a
# PyTorch user writes (scripts/train_pytorch_loop.py: Dataset + torchvision transforms, DataLoader,
# SGD), in one invocation, on the same model and weights, the same images (N of
# cifar10-jpeg-train, bitbench's own pick), decoded the same way (OpenCV), the same augmentation,
# loss, optimizer, BN mode (fp32's finetune_* defaults: SGD lr 0.001 momentum 0.9, cross-entropy,
# BN in train mode, crop + flip), the same batch size and intra-op threads.
#
#   bench/train_vs_pytorch.sh [BUILD_DIR]
#   env: MODEL    cifar_resnet20 (default) | cifar_resnet32 | cifar_resnet44 | cifar_resnet56
#        IMAGES   images per epoch, bitbench's finetune_max_images (default: 2048)
#        EPOCHS   epochs (default: 1)
#        BATCH    batch size (default: 128, fp32's finetune_batch default)
#        THREADS  libtorch intra-op threads on both sides (default: nproc)
#        WORKERS  DataLoader worker processes on the PyTorch side (default: nproc)
#        BB_WORKERS  bitbench decode threads (default: unset = bitbench's default, half the cores)
#        REPEATS  runs of each side, interleaved; the median is reported (default: 1)
#        BITBENCH_DATA_ROOT  as for bitbench
#
# What each side times (no warm-up excluded on either side):
#   bitbench: the `finetune` phase of `bitbench compress --method fp32` (phase_seconds.finetune in
#     its JSON): sampling the images, building the optimizer, every training step with its decode
#     threads running ahead (their start-up included), and copying the trained weights back; not
#     model loading, listing the dataset folder, writing the .bbz. Images = the count its log
#     reports ("fp32: fine-tuned ... N images"), i.e. ceil(EPOCHS x IMAGES).
#   PyTorch: from creating the DataLoader iterator (worker start-up included) to the end of the
#     last optimizer step; not imports, model loading, listing the folder.
# Prints both throughputs and their ratio (> 1: bitbench is faster; the issue-21 goal is >= 1.3),
# each side's loss over the first and last 10% of steps (similar when both train the same way),
# and the PyTorch side's split into waiting for data / forward+loss / backward / optimizer step. Exits non-zero only
# on errors, never on a missed goal.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build}
BB="$BUILD/bitbench"
PY=/usr/bin/python3
MODEL=${MODEL:-cifar_resnet20}
IMAGES=${IMAGES:-2048}
EPOCHS=${EPOCHS:-1}
BATCH=${BATCH:-128}
THREADS=${THREADS:-$(nproc)}
WORKERS=${WORKERS:-$(nproc)}
BB_WORKERS=${BB_WORKERS:-0}
REPEATS=${REPEATS:-1}
DATA=${BITBENCH_DATA_ROOT:-../shared/data}
WEIGHTS=$DATA/models/cifar10_${MODEL#cifar_}.pt
[ -x "$BB" ] || { echo "train_vs_pytorch.sh: $BB not found; run 'make build' first" >&2; exit 1; }
[ -f "$WEIGHTS" ] || { echo "train_vs_pytorch.sh: weights '$WEIGHTS' not found" >&2; exit 1; }
$PY -c "import torch, torchvision, cv2" 2>/dev/null || { echo "train_vs_pytorch.sh: $PY lacks torch/torchvision/cv2" >&2; exit 1; }

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
median() { sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }

echo "model=$MODEL images=$IMAGES epochs=$EPOCHS batch=$BATCH threads=$THREADS pytorch-workers=$WORKERS bitbench-decode-threads=${BB_WORKERS/#0/default} repeats=$REPEATS host=$(hostname) cores=$(nproc) load=$(cut -d' ' -f1-3 /proc/loadavg) commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
bbs=() pys=()
for ((r = 0; r < REPEATS; ++r)); do
  if ! BITBENCH_THREADS=$THREADS BITBENCH_DECODE_THREADS=$BB_WORKERS "$BB" compress --method fp32 \
      --set finetune_epochs="$EPOCHS" --set finetune_max_images="$IMAGES" --set finetune_batch="$BATCH" \
      --model "$MODEL" --weights "$WEIGHTS" --calib cifar10-jpeg-train --out "$TMP/fp32.bbz" --json \
      >"$TMP/bb.json" 2>"$TMP/bb.log"; then
    tail -20 "$TMP/bb.log" >&2
    echo "train_vs_pytorch.sh: bitbench compress failed" >&2
    exit 1
  fi
  bb=$($PY - "$TMP/bb.json" "$TMP/bb.log" <<'EOF'
import json, re, sys
rec = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
log = open(sys.argv[2]).read()
sec = rec["phase_seconds"]["finetune"]
m = re.search(r"fp32: fine-tuned \d+ weights, (\d+) images, loss ([\d.eE+-]+) -> ([\d.eE+-]+)", log)
s = re.search(r"finetune: (\d+) steps", log)
if not m or not s:
    sys.exit("train_vs_pytorch.sh: bitbench's log does not report the fine-tuning (images, steps)")
n = int(m.group(1))
print(f"{n / sec} {n} {s.group(1)} {sec} {m.group(2)} {m.group(3)} {rec['context']['num_threads']} {rec['context']['git_commit']}")
EOF
)
  read -r bb_ips bb_n bb_steps bb_s bb_l0 bb_l1 bb_threads bb_commit <<<"$bb"
  [ "$bb_threads" = "$THREADS" ] || { echo "train_vs_pytorch.sh: bitbench ran $bb_threads threads, not $THREADS" >&2; exit 1; }
  out=$($PY scripts/train_pytorch_loop.py --model "$MODEL" --weights "$WEIGHTS" --data "$DATA/cifar10/jpeg/train" \
        --images "$IMAGES" --epochs "$EPOCHS" --batch-size "$BATCH" --threads "$THREADS" --workers "$WORKERS")
  read -r py_ips py_n py_steps py_s py_wait py_fwd py_bwd py_opt py_l0 py_l1 <<<"$(echo "$out" | $PY -c "
import json, sys
d = json.loads(sys.stdin.read().strip().splitlines()[-1])
print(d['images_per_s'], d['images'], d['steps'], d['seconds'], d['data_wait_s'], d['forward_s'], d['backward_s'],
      d['optimizer_s'], d['first_loss'], d['last_loss'])")"
  [ "$bb_n" = "$py_n" ] || { echo "train_vs_pytorch.sh: bitbench trained $bb_n images, PyTorch $py_n" >&2; exit 1; }
  printf "run %d  bitbench: %d images, %d steps in %.2f s = %.1f img/s (loss %.4f -> %.4f, binary %s)\n" \
    $((r + 1)) "$bb_n" "$bb_steps" "$bb_s" "$bb_ips" "$bb_l0" "$bb_l1" "$bb_commit"
  printf "run %d  pytorch:  %d images, %d steps in %.2f s = %.1f img/s (loss %.4f -> %.4f; waiting for data %.2f s, forward+loss %.2f s, backward %.2f s, optimizer %.2f s)\n" \
    $((r + 1)) "$py_n" "$py_steps" "$py_s" "$py_ips" "$py_l0" "$py_l1" "$py_wait" "$py_fwd" "$py_bwd" "$py_opt"
  bbs+=("$bb_ips")
  pys+=("$py_ips")
done
b=$(printf "%s\n" "${bbs[@]}" | median)
p=$(printf "%s\n" "${pys[@]}" | median)
printf "training images/s (median of %d): bitbench %.1f  pytorch %.1f  ratio %.2fx (goal >= 1.3x)\n" \
  "$REPEATS" "$b" "$p" "$(awk -v b="$b" -v p="$p" 'BEGIN {print b / p}')"
