#!/usr/bin/env bash
# Benchmark (not a test): `bitbench eval` images/s against the evaluation loop a PyTorch user writes
# (scripts/eval_pytorch_loop.py: torchvision ImageFolder + transforms, DataLoader), on the same
# images with the same model, weights, batch size and intra-op threads; each side decodes with its
# usual workers (DataLoader: one process per core; bitbench: its default decode threads).
#
#   bench/eval_vs_pytorch.sh [BUILD_DIR]
#   env: THREADS  libtorch intra-op threads on both sides (default: nproc)
#        WORKERS  DataLoader worker processes on the PyTorch side (default: nproc)
#        BB_WORKERS  bitbench decode threads (default: unset = bitbench's default, half the cores)
#        REPEATS  runs of each side, interleaved; the median is reported (default: 3)
#        LIMIT    images of the CIFAR-10 JPEG test folder (default: 2000; 0 = all 10,000)
#        BITBENCH_DATA_ROOT  as for bitbench
#
# Paths: the ImageFolder path (CIFAR-10 JPEG test folder with cifar_resnet20/56; imagenet-sample
# with ResNet-18 random weights, Resize(256)+CenterCrop(224)) and the CIFAR-10 binary path
# (cifar10-lossless-1k; PyTorch reads the records like torchvision's CIFAR10: numpy -> PIL -> transform).
# Prints one line per case with both throughputs and their ratio (> 1: bitbench is faster), and
# top-1 from both sides, which agree when the preprocessing does.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build}
BB="$BUILD/bitbench"
PY=/usr/bin/python3
THREADS=${THREADS:-$(nproc)}
WORKERS=${WORKERS:-$(nproc)}
BB_WORKERS=${BB_WORKERS:-0}
REPEATS=${REPEATS:-3}
LIMIT=${LIMIT:-2000}
DATA=${BITBENCH_DATA_ROOT:-../shared/data}
[ -x "$BB" ] || { echo "eval_vs_pytorch.sh: $BB not found; run 'make build' first" >&2; exit 1; }
$PY -c "import torch, torchvision" 2>/dev/null || { echo "eval_vs_pytorch.sh: $PY lacks torch/torchvision" >&2; exit 1; }

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
# ResNet-18 with random weights (no ImageNet-pretrained weights exist on this machine).
$PY -c "import torch, torchvision; torch.manual_seed(0); torch.save(dict(torchvision.models.resnet18().state_dict()), '$TMP/resnet18.pt')"

median() { sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
field() { $PY -c "import json, sys; print(json.loads(sys.stdin.read().strip().splitlines()[-1])['$1'])"; }

echo "threads=$THREADS pytorch-workers=$WORKERS bitbench-decode-threads=${BB_WORKERS/#0/default} repeats=$REPEATS cifar-folder-limit=$LIMIT host=$(hostname) cores=$(nproc) load=$(cut -d' ' -f1-3 /proc/loadavg)"
printf "%-34s %14s %14s %7s %16s\n" "case" "bitbench img/s" "pytorch img/s" "ratio" "top-1 bb / pt"

# run_case NAME MODEL WEIGHTS BITBENCH_DATASET PY_KIND PY_DATA BATCH LIMIT
run_case() {
  local name=$1 model=$2 weights=$3 dataset=$4 kind=$5 pydata=$6 batch=$7 limit=$8
  local bbs=() pys=() bbtop pytop
  for ((r = 0; r < REPEATS; ++r)); do
    local out
    out=$(BITBENCH_THREADS=$THREADS BITBENCH_DECODE_THREADS=$BB_WORKERS "$BB" eval --model "$model" --weights "$weights" \
          --dataset "$dataset" --batch-size "$batch" --limit "$limit" --json 2>/dev/null)
    bbs+=("$(echo "$out" | field images_per_s)")
    bbtop=$(echo "$out" | field top1)
    out=$($PY scripts/eval_pytorch_loop.py --model "$model" --weights "$weights" --data "$pydata" --kind "$kind" \
          --batch-size "$batch" --threads "$THREADS" --workers "$WORKERS" --limit "$limit")
    pys+=("$(echo "$out" | field images_per_s)")
    pytop=$(echo "$out" | field top1)
  done
  local b p
  b=$(printf "%s\n" "${bbs[@]}" | median)
  p=$(printf "%s\n" "${pys[@]}" | median)
  printf "%-34s %14.1f %14.1f %6.2fx %7.2f / %6.2f\n" "$name" "$b" "$p" "$(awk -v b="$b" -v p="$p" 'BEGIN {print b / p}')" "$bbtop" "$pytop"
}

M=$DATA/models
run_case "folder cifar10-jpeg-test resnet20" cifar_resnet20 "$M/cifar10_resnet20.pt" cifar10-jpeg-test cifar-folder "$DATA/cifar10/jpeg/test" 100 "$LIMIT"
run_case "folder cifar10-jpeg-test resnet56" cifar_resnet56 "$M/cifar10_resnet56.pt" cifar10-jpeg-test cifar-folder "$DATA/cifar10/jpeg/test" 100 "$LIMIT"
run_case "folder imagenet-sample resnet18" resnet18 "$TMP/resnet18.pt" imagenet-sample imagenet-folder "$DATA/imagenet-sample/val" 25 0
run_case "binary cifar10-lossless-1k resnet20" cifar_resnet20 "$M/cifar10_resnet20.pt" cifar10-lossless-1k cifar-binary "$DATA/cifar10/test_lossless_1k.bin" 100 0
run_case "binary cifar10-lossless-1k resnet56" cifar_resnet56 "$M/cifar10_resnet56.pt" cifar10-lossless-1k cifar-binary "$DATA/cifar10/test_lossless_1k.bin" 100 0
