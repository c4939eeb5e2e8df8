#pragma once
// One communicator, two data planes: calls on CUDA tensors go to the GPU
// backend (NCCL), calls on CPU tensors to the CPU backend (MPI). Training on
// GPUs moves rows and gradients on the device while the small host-side
// exchanges (counts checks, metrics, agreement) stay on MPI, and callers
// never choose a backend: the tensor's device does.
//
// Both backends span the same ranks in the same order; split() splits both
// (collective over both), so sub-groups keep the pairing.
#include <memory>

#include "dist/communicator.h"

namespace dsk::dist {

std::unique_ptr<Communicator> make_device_dispatch_communicator(std::unique_ptr<Communicator> cpu,
                                                                std::unique_ptr<Communicator> gpu);

}  // namespace dsk::dist
