#!/usr/bin/env bash
# Full-precision top-1 of every bundled pretrained model on its reference test set.
set -euo pipefail
bb=${1:-build/bitbench}
data=${BITBENCH_DATA_ROOT:-$(cd "$(dirname "$0")/.." && pwd)/../shared/data}
for d in 20 32 44 56; do
  "$bb" eval --model cifar_resnet$d --weights "$data/models/cifar10_resnet$d.pt" --dataset cifar10-lossless-1k
done
"$bb" eval --model lenet5 --weights "$data/models/mnist_lenet5.pt" --dataset mnist-test
