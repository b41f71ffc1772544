#!/usr/bin/env bash
# Benchmark (not a test): wall time, phase breakdown and peak RSS of `bitbench compress` per
# method on cifar_resnet20, cifar_resnet56 and ResNet-18 / ResNet-50 shapes (random weights,
# calibrated on the 100 imagenet-sample images), no fine-tuning, no evaluation, no cache.
#   bench/compress_times.sh [BUILD_DIR]
#   env: MODELS   space-separated subset (default: cifar_resnet20 cifar_resnet56 resnet18)
#        METHODS  space-separated subset (default: every method below)
#        OUT      JSON lines file (default results/bench/compress_times.jsonl)
# Each line of OUT is the compress --json object plus "model", "wall_s" and "peak_rss_mb" as
# measured from outside (/usr/bin/time); a table is printed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build}
BB="$BUILD/bitbench"
PY=/usr/bin/python3
DATA=${BITBENCH_DATA_ROOT:-../shared/data}
MODELS=${MODELS:-"cifar_resnet20 cifar_resnet56 resnet18"}
METHODS=${METHODS:-"uniform kmeans hessian_kmeans uniform_ecsq ecsq kq pq tq"}
OUT=${OUT:-results/bench/compress_times.jsonl}
mkdir -p "$(dirname "$OUT")"
: > "$OUT"
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

weights_of() {  # model -> weights file
  case $1 in
    cifar_resnet*) echo "$DATA/models/cifar10_resnet${1#cifar_resnet}.pt" ;;
    resnet18|resnet50)
      [[ -f "$TMP/$1.pt" ]] || $PY -c "import torch, torchvision; torch.manual_seed(0); torch.save(dict(torchvision.models.$1().state_dict()), '$TMP/$1.pt')"
      echo "$TMP/$1.pt" ;;
    *) echo "compress_times.sh: no weights for $1" >&2; exit 2 ;;
  esac
}
settings_of() {  # method model -> --set flags (the rates of table2; ImageNet: fewer calibration images exist)
  local m=$1 model=$2 s=""
  case $m in
    uniform|kmeans) s="--set bits=4" ;;
    hessian_kmeans|uniform_ecsq|ecsq|kq) s="--set target_bpw=2" ;;
    pq) s="--set regime=small" ;;
    tq) s="--set target_bpw=2" ;;
  esac
  if [[ $model == resnet* ]]; then
    case $m in
      hessian_kmeans) s="$s --set hessian_images=100" ;;
      pq) s="$s --set calib_images=100" ;;
      kq) [[ $model == resnet50 ]] && s="$s --set pointwise_bits=4" ;;  # its 1x1 convs stay float otherwise: 2 bpw unreachable
      tq) s="$s --set batch_size=25" ;;  # 1.27x faster passes than one batch of 100 at 224x224 (docs/PERFORMANCE.md)
    esac
  fi
  echo "$s"
}

for model in $MODELS; do
  w=$(weights_of "$model")
  calib=""
  [[ $model == resnet* ]] && calib="--calib imagenet-sample"
  for m in $METHODS; do
    echo "=== $model $m ===" >&2
    # shellcheck disable=SC2046
    if /usr/bin/time -f "%e %M" -o "$TMP/time" "$BB" compress --allow-off-target --method "$m" $(settings_of "$m" "$model") \
         --model "$model" --weights "$w" $calib --out "$TMP/x.bbz" --json > "$TMP/out.json" 2> "$TMP/err"; then
      read -r wall rss < "$TMP/time"
      $PY -c "import json,sys; j=json.load(open('$TMP/out.json')); j.update(model='$model', method='$m', wall_s=$wall, peak_rss_mb=$rss/1024); print(json.dumps(j))" >> "$OUT"
    else
      echo "compress_times.sh: $model $m failed:" >&2
      tail -3 "$TMP/err" >&2
    fi
  done
done

$PY - "$OUT" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print("%-15s %-15s %8s %9s %8s  %s" % ("model", "method", "wall s", "RSS MB", "bpw", "phases (s)"))
for r in rows:
    ph = ", ".join("%s %.1f" % (k, v) for k, v in sorted(r.get("phase_seconds", {}).items(), key=lambda kv: -kv[1]) if v >= 0.05)
    print("%-15s %-15s %8.1f %9.0f %8.3f  %s" % (r["model"], r["method"], r["wall_s"], r["peak_rss_mb"], r.get("bpw_core", 0), ph))
PY
