#pragma once
// For multi-rank gtest mains: ranks other than 0 report only their failures,
// prefixed with the rank, so a failure on one rank is visible without
// interleaving every rank's log.
#include <gtest/gtest.h>

#include <cstdio>
#include <string>

namespace dsk::testing {

class FailureOnlyPrinter : public ::testing::EmptyTestEventListener {
 public:
  explicit FailureOnlyPrinter(int rank) : rank_(rank) {}
  // gtest holds its lock while reporting a part result, so the test name
  // is remembered here rather than asked for there.
  void OnTestStart(const ::testing::TestInfo& test) override {
    test_ = std::string(test.test_suite_name()) + "." + test.name();
  }
  void OnTestPartResult(const ::testing::TestPartResult& result) override {
    if (!result.failed()) return;
    std::fprintf(stderr, "[rank %d] %s: %s:%d: %s\n", rank_, test_.c_str(),
                 result.file_name() ? result.file_name() : "?", result.line_number(), result.summary());
  }

 private:
  int rank_;
  std::string test_;
};

}  // namespace dsk::testing
