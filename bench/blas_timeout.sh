#!/usr/bin/env bash
# How OpenBLAS's idle worker threads wait (docs/PERFORMANCE.md, "Waiting threads"): wall seconds of
# four workloads with OPENBLAS_THREAD_TIMEOUT=28 (OpenBLAS's own default: workers spin on
# sched_yield for 2^28 cycles after each call) and =4 (bitbench's: they sleep at once), and whether
# each setting wrote the same bytes. Workloads (cifar_resnet56 unless said): gptq target_bpw=2 and
# kq target_bpw=4 (the settings below) with their allocation candidates cached, tq row-ELT
# at 2 bpw on cifar_resnet20 computing its curves (table2's settings), and `bitbench eval` on
# cifar10-jpeg-test. A first pass fills the candidate caches; then ROUNDS rounds (default 2).
source "$(dirname "$0")/ab_common.sh"
KQ="--set alloc_max_bits=12 --set alloc_proxy=mse --set calib_images=256 --set gain_bits=2 --set grid_iters=5 --set index_bits=9 --set kmeans_iters=25 --set kmeans_metric=output --set sequential=true --set target_bpw=4"
work() {  # timeout, then the tag of this pass; prints one line
  local t=$1 tag=$2 C="$TMP/cache" g k q v same=""
  rm -rf "$C/tq"
  g=$(secs OPENBLAS_THREAD_TIMEOUT="$t" "$BB" compress --method gptq --set target_bpw=2 --model cifar_resnet56 \
        --weights "$D/cifar10_resnet56.pt" --calib cifar10-jpeg-train --cache-dir "$C" --out "$TMP/g$tag.bbz")
  k=$(secs OPENBLAS_THREAD_TIMEOUT="$t" "$BB" compress --method kq $KQ --model cifar_resnet56 \
        --weights "$D/cifar10_resnet56.pt" --calib cifar10-jpeg-train --cache-dir "$C" --out "$TMP/k$tag.bbz")
  q=$(secs OPENBLAS_THREAD_TIMEOUT="$t" "$BB" compress --method tq $TQ --model cifar_resnet20 \
        --weights "$D/cifar10_resnet20.pt" --calib cifar10-jpeg-train --cache-dir "$C" --out "$TMP/t$tag.bbz")
  v=$(secs OPENBLAS_THREAD_TIMEOUT="$t" "$BB" eval --model cifar_resnet56 --weights "$D/cifar10_resnet56.pt" \
        --dataset cifar10-jpeg-test)
  for x in g k t; do
    # the files' first 200 bytes hold the provenance; the rest must match the warm-up pass's
    if cmp -s <(tail -c +200 "$TMP/${x}warm.bbz") <(tail -c +200 "$TMP/$x$tag.bbz"); then same="$same $x=same"; else same="$same $x=DIFFERENT"; fi
  done
  echo "OPENBLAS_THREAD_TIMEOUT=$t gptq $g s, kq $k s, tq $q s, eval $v s |$same"
}
work 28 warm >/dev/null
for r in $(seq "$ROUNDS"); do
  work 28 "a$r"
  work 4 "b$r"
done
