#!/usr/bin/env bash
# KQ's index streams stored fixed-width (the paper's) and entropy-coded (new): bpw_core and the
# paper's bits per conv parameter from the .bbz file's size, for index widths b = 4..10, no
# fine-tuning. The coder does not change the indices or codebooks, so the decoded weights (and
# top-1, in results/kq_sweep) are the same for all three; only the bytes differ.
#   scripts/kq_index_coding.sh [BUILD_DIR]
#   env: MODELS (default: the four CIFAR ResNets), BITS (default: 4..10),
#        OUT (default: results/kq_sweep/index_coding.jsonl)
set -euo pipefail
cd "$(dirname "$0")/.."
BB=${1:-build}/bitbench
DATA=${BITBENCH_DATA_ROOT:-../shared/data}
MODELS=${MODELS:-"cifar_resnet20 cifar_resnet32 cifar_resnet44 cifar_resnet56"}
BITS=${BITS:-"4 5 6 7 8 9 10"}
OUT=${OUT:-results/kq_sweep/index_coding.jsonl}
[ -x "$BB" ] || { echo "kq_index_coding.sh: $BB not found; run 'make build' first" >&2; exit 1; }
mkdir -p "$(dirname "$OUT")"
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
: > "$TMP/out.jsonl"
printf "%-16s %3s %24s %24s %24s\n" model b "fixed bpw_core/yu_conv" "huffman bpw_core/yu_conv" "rans bpw_core/yu_conv"
for m in $MODELS; do
  w="$DATA/models/cifar10_resnet${m#cifar_resnet}.pt"
  for b in $BITS; do
    line=$(printf "%-16s %3s" "$m" "$b")
    for c in fixed huffman rans; do
      j=$("$BB" compress --method kq --set index_bits="$b" --set coder="$c" --model "$m" --weights "$w" \
            --out "$TMP/m.bbz" --json 2>/dev/null | tail -1)
      /usr/bin/python3 -c "import json, sys; j = json.loads(sys.argv[1]); print(json.dumps({'model': sys.argv[2], 'index_bits': int(sys.argv[3]), 'coder': sys.argv[4], 'bpw_core': j['bpw_core'], 'bpw_yu_conv': j['bpw_yu_conv'], 'file_bytes': j['file_bytes']}))" "$j" "$m" "$b" "$c" >> "$TMP/out.jsonl"
      line+=$(/usr/bin/python3 -c "import json, sys; j = json.loads(sys.argv[1]); print('%24s' % ('%.4f / %.4f' % (j['bpw_core'], j['bpw_yu_conv'])))" "$j")
    done
    echo "$line"
  done
done
mv "$TMP/out.jsonl" "$OUT"
echo "JSON lines: $OUT"
