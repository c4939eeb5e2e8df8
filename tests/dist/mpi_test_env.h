#pragma once
#include "dist/communicator.h"

namespace dsk::testing {
// The world of the test job (every rank runs every test, in the same order).
dist::Communicator& test_world();
}  // namespace dsk::testing
