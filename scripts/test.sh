#!/usr/bin/env bash
# Installs the dependencies, builds, and runs every test (unit and
# multi-rank). `.ci/run` calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
./scripts/build.sh
source scripts/mpi-env.sh
cd "${DSK_BUILD_DIR:-build}"
ctest --output-on-failure --timeout 900 "$@"
