#pragma once
// Failing together. A step that can fail on some ranks and not others (a
// file one rank reads, a config check) runs through run_agreed: if it throws
// anywhere, it throws everywhere, so no rank is left waiting in the next
// collective, and exactly one rank (the lowest failing one) carries the
// message to print.
#include <functional>
#include <stdexcept>

#include "dist/communicator.h"

namespace dsk::dist {

// Thrown on the ranks whose peer holds the error message: exit with
// `exit_code`, print nothing.
class PeerFailure : public std::runtime_error {
 public:
  explicit PeerFailure(int exit_code) : std::runtime_error("a peer failed"), exit_code_(exit_code) {}
  int exit_code() const { return exit_code_; }

 private:
  int exit_code_;
};

// Collective over `comm`. Exit codes: UsageError 2, any other exception 1.
void run_agreed(Communicator& comm, const std::function<void()>& body);

}  // namespace dsk::dist
