#!/usr/bin/env bash
# Installs the Debian packages bitbench needs to build, test and benchmark. Idempotent: when all
# are present it only runs one dpkg-query (well under a second). Needs root (or sudo) to install.
set -euo pipefail
PKGS=(
  build-essential cmake ninja-build ccache git pkg-config
  libtorch-dev libopenblas0-pthread
  libopencv-dev libyaml-cpp-dev nlohmann-json3-dev
  catch2 libbenchmark-dev libfaiss-dev libeigen3-dev
  python3-torch python3-torchvision python3-opencv python3-yaml
  slurmctld slurmd slurm-client munge
)
missing=()
for p in "${PKGS[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
  [[ "$status" == "install ok installed" ]] || missing+=("$p")
done
if [[ ${#missing[@]} -eq 0 ]]; then
  [[ "${1:-}" == "--quiet" ]] || echo "install-deps: all ${#PKGS[@]} packages present"
  exit 0
fi
echo "install-deps: installing ${missing[*]}"
SUDO=""
if [[ $(id -u) -ne 0 ]]; then
  command -v sudo >/dev/null || { echo "install-deps: need root or sudo to install: ${missing[*]}" >&2; exit 1; }
  SUDO=sudo
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
# Debian's libtorch uses whatever libblas.so.3 the alternatives system selects: make it OpenBLAS.
if [[ -e /usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3 ]]; then
  $SUDO update-alternatives --set libblas.so.3-x86_64-linux-gnu /usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3 || true
  $SUDO update-alternatives --set liblapack.so.3-x86_64-linux-gnu /usr/lib/x86_64-linux-gnu/openblas-pthread/liblapack.so.3 || true
fi
echo "install-deps: done"
