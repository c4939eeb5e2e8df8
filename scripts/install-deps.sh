#!/usr/bin/env bash
# Installs every build and run-time dependency of dsk from Debian's packages.
# Idempotent: a second run only checks. Needs root (or sudo) for apt.
set -euo pipefail

packages=(
  build-essential cmake ninja-build pkg-config
  libtorch-dev
  # LibTorch only recommends OpenBLAS; without it libblas.so.3 is the
  # reference BLAS, ~30x slower (cmake/CheckBlas.cmake refuses it).
  libopenblas0-pthread libopenblas-pthread-dev
  libopenmpi-dev openmpi-bin
  libprotobuf-dev protobuf-compiler
  zlib1g-dev python3
  libgtest-dev googletest nlohmann-json3-dev
  dataset-fashion-mnist
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ "${#missing[@]}" -gt 0 ]; then
  sudo_cmd=()
  [ "$(id -u)" -ne 0 ] && sudo_cmd=(sudo)
  export DEBIAN_FRONTEND=noninteractive
  "${sudo_cmd[@]}" apt-get update -qq
  "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# Point libblas.so.3 at OpenBLAS even if the reference BLAS was installed first.
if command -v update-alternatives >/dev/null; then
  blas=$(update-alternatives --list libblas.so.3-x86_64-linux-gnu 2>/dev/null | grep openblas | head -n1 || true)
  if [ -n "$blas" ] && [ "$(id -u)" -eq 0 ]; then
    update-alternatives --set libblas.so.3-x86_64-linux-gnu "$blas" >/dev/null
  fi
fi
echo "install-deps: all dependencies present"
