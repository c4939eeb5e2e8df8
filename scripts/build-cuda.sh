#!/usr/bin/env bash
# Configures and builds dsk against a CUDA-enabled LibTorch 2.x, with the
# CUDA and NCCL parts on, into ./build-cuda (or $DSK_BUILD_DIR). docs/gpu.md.
#
# The LibTorch prefix is $TORCH_PREFIX, else what PyTorch reports:
#   python3 -c 'import torch; print(torch.utils.cmake_prefix_path)'
# ($PYTHON picks the interpreter). NCCL: $NCCL_ROOT, else the NCCL bundled
# with that PyTorch (pip package nvidia-nccl-cu*) when present, so dsk and
# libtorch_cuda load the same libnccl.so.2; else next to the CUDA toolkit.
# Extra arguments go to cmake.
set -euo pipefail
cd "$(dirname "$0")/.."
build_dir=${DSK_BUILD_DIR:-build-cuda}
python=${PYTHON:-python3}

die() { echo "build-cuda.sh: error: $*" >&2; exit 2; }

have_torch=0
"$python" -c 'import torch' 2>/dev/null && have_torch=1
if [ -z "${TORCH_PREFIX:-}" ]; then
  [ "$have_torch" = 1 ] || die "no PyTorch for $python; install torch (with CUDA) or set TORCH_PREFIX to a LibTorch's share/cmake"
  TORCH_PREFIX=$("$python" -c 'import torch; print(torch.utils.cmake_prefix_path)')
fi
echo "build-cuda.sh: LibTorch prefix $TORCH_PREFIX"

if [ "$have_torch" = 1 ] && [ -z "${DSK_SKIP_TORCH_CHECKS:-}" ]; then
  read -r torch_version torch_cuda torch_abi < <("$python" -c \
    'import torch; print(torch.__version__, torch.version.cuda, int(torch._C._GLIBCXX_USE_CXX11_ABI))')
  echo "build-cuda.sh: PyTorch $torch_version, CUDA $torch_cuda, _GLIBCXX_USE_CXX11_ABI=$torch_abi"
  [ "$torch_cuda" != None ] || die "PyTorch $torch_version is built without CUDA"
  # dsk also links the distribution's protobuf and gtest (new ABI); a
  # pre-C++11-ABI LibTorch (pip wheels before 2.7) cannot link with them.
  [ "$torch_abi" = 1 ] || die "this LibTorch uses the pre-C++11 ABI; use PyTorch >= 2.7 or a cxx11-ABI LibTorch (DSK_SKIP_TORCH_CHECKS=1 to try anyway)"
  if command -v nvcc >/dev/null; then
    nvcc_cuda=$(nvcc --version | sed -n 's/.*release \([0-9]*\.[0-9]*\).*/\1/p')
    [ "${nvcc_cuda%%.*}" = "${torch_cuda%%.*}" ] ||
      echo "build-cuda.sh: warning: nvcc is CUDA $nvcc_cuda but PyTorch is built for CUDA $torch_cuda; dsk's libcudart comes from the toolkit (set CUDAToolkit_ROOT to a matching one)" >&2
  fi
  if [ -z "${NCCL_ROOT:-}" ]; then
    bundled=$("$python" -c 'import nvidia.nccl, os; print(os.path.dirname(nvidia.nccl.__file__) if nvidia.nccl.__file__ else list(nvidia.nccl.__path__)[0])' 2>/dev/null || true)
    if [ -n "$bundled" ] && [ -f "$bundled/include/nccl.h" ]; then
      export NCCL_ROOT=$bundled
      echo "build-cuda.sh: NCCL bundled with PyTorch: $NCCL_ROOT"
    fi
  fi
fi

generator=()
command -v ninja >/dev/null && generator=(-G Ninja)
cuda_root=()
[ -n "${CUDAToolkit_ROOT:-}" ] && cuda_root=(-DCUDAToolkit_ROOT="$CUDAToolkit_ROOT")
# DSK_CHECK_BLAS is about Debian's libblas.so.3 behind Debian's LibTorch; the
# PyTorch LibTorch brings its own BLAS.
cmake -S . -B "$build_dir" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="$TORCH_PREFIX" "${cuda_root[@]}" \
  -DDSK_WITH_CUDA=ON -DDSK_WITH_NCCL=ON -DDSK_CHECK_BLAS=OFF "$@"
cmake --build "$build_dir" --parallel "$(nproc)"
