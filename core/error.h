#pragma once
// Error kinds that decide the exit code of `dsk` (docs/cli.md):
//   UsageError   -> exit 2: bad CLI, config, data file or checkpoint. The
//                   message is one line naming the file and the field.
//   anything else -> exit 1: a runtime failure.
#include <stdexcept>
#include <string>

namespace dsk {

class UsageError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

}  // namespace dsk
