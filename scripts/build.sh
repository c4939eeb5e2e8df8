#!/usr/bin/env bash
# Configures (Release, Ninja) and builds dsk into ./build (or $DSK_BUILD_DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
build_dir=${DSK_BUILD_DIR:-build}
generator=()
command -v ninja >/dev/null && generator=(-G Ninja)
cmake -S . -B "$build_dir" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release "$@"
cmake --build "$build_dir" --parallel "$(nproc)"
