#!/usr/bin/env bash
# GPTQ's options one at a time on the validation split (docs/methods/gptq.md, "The other options"):
# cifar_resnet32, target_bpw=1.5, no retraining; prints bpw_core, cifar10-jpeg-val top-1 (chooses)
# and cifar10-lossless-1k top-1 (reports) per option. The base is the parallel setting the
# documented table was measured around (sequential=false calib_images=128; BASE="" for the current
# defaults); an option replaces the base's value of its key; an option of several settings is one
# argument, space-separated ("sequential=true fp_target=false").
#   scripts/gptq_ablation.sh [option ...]      (default: the documented list)
set -euo pipefail
cd "$(dirname "$0")/.."
BB=${BITBENCH:-build/bitbench}
opts=("$@")
[ ${#opts[@]} -eq 0 ] && opts=("" "act_order=false" "damp=0.001" "damp=0.1" "sequential=true fp_target=false" "calib_images=64"
                              "calib_images=256" "logits_images=512" "steps_per_octave=8")
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for v in "${opts[@]}"; do
  declare -A kv=([target_bpw]=1.5)
  for x in ${BASE-sequential=false calib_images=128} $v; do kv[${x%%=*}]=${x#*=}; done
  sets=()
  for k in "${!kv[@]}"; do sets+=(--set "$k=${kv[$k]}"); done
  unset kv
  "$BB" compress --method gptq "${sets[@]}" --model cifar_resnet32 --weights ../shared/data/models/cifar10_resnet32.pt \
    --out "$tmp/g.bbz" --calib cifar10-jpeg-train --eval cifar10-jpeg-val --eval cifar10-lossless-1k --json \
    > "$tmp/g.json" 2> "$tmp/g.err" || { echo "[${v:-default}] failed:"; tail -3 "$tmp/g.err"; exit 1; }
  python3 - "$tmp/g.json" "${v:-default}" <<'PY'
import json, sys
j = json.load(open(sys.argv[1])); e = j["eval"]
print(f'{sys.argv[2]:24s} bpw_core {j["bpw_core"]:.4f}  val {e["cifar10-jpeg-val"]["top1"]:.2f}  '
      f'lossless-1k {e["cifar10-lossless-1k"]["top1"]:.1f}  allocate {j["phase_seconds"].get("allocate", 0):.0f} s')
PY
done
