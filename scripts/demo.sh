#!/usr/bin/env bash
# Installs the dependencies, builds, and runs the main job: a 2-rank mpirun
# training of the DSelect-k multi-task MoE on Multi-Fashion-MNIST, printing
# per-task test accuracy at the end. Extra arguments go to `dsk train`.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
./scripts/build.sh
source scripts/mpi-env.sh
mpirun -np 2 build/dsk train --config configs/multifashion.pbtxt --out runs/demo "$@"
