// Small pure units: expert placement, batch slicing, the epoch sampler,
// --set overrides and the JSON number format of metrics.jsonl.
#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include <cmath>
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <set>
#include <string>
#include <vector>

#include "core/data/sampler.h"
#include "core/error.h"
#include "dist/sharding.h"
#include "launch/config.h"
#include "launch/metrics.h"

namespace {

using dsk::dist::ExpertSharding;

std::vector<int64_t> to_vector(const at::Tensor& t) {
  at::Tensor c = t.to(at::kLong).contiguous();
  return std::vector<int64_t>(c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + c.numel());
}

bool is_permutation_of_range(const at::Tensor& t, int64_t n) {
  if (t.dim() != 1 || t.size(0) != n) return false;
  std::vector<int64_t> v = to_vector(t);
  std::vector<bool> seen(n, false);
  for (int64_t x : v) {
    if (x < 0 || x >= n || seen[x]) return false;
    seen[x] = true;
  }
  return true;
}

// ---- ExpertSharding -----------------------------------------------------------

TEST(ExpertShardingTest, SixExpertsOnFourShards) {
  ExpertSharding s(6, 4);
  EXPECT_EQ(s.num_experts(), 6);
  EXPECT_EQ(s.num_shards(), 4);
  EXPECT_EQ(s.counts(), (std::vector<int64_t>{2, 2, 1, 1}));
  EXPECT_EQ(s.first_expert(0), 0);
  EXPECT_EQ(s.first_expert(1), 2);
  EXPECT_EQ(s.first_expert(2), 4);
  EXPECT_EQ(s.first_expert(3), 5);
  const std::vector<int> owners = {0, 0, 1, 1, 2, 3};
  for (int64_t e = 0; e < 6; ++e) EXPECT_EQ(s.owner(e), owners[e]) << "expert " << e;
  EXPECT_EQ(s.describe(), "rank 0: experts 0-1; rank 1: experts 2-3; rank 2: expert 4; rank 3: expert 5");
}

TEST(ExpertShardingTest, ConsistentForAllSmallSizes) {
  for (int64_t n = 1; n <= 20; ++n) {
    for (int shards = 1; shards <= 8; ++shards) {
      SCOPED_TRACE("n=" + std::to_string(n) + " shards=" + std::to_string(shards));
      ExpertSharding s(n, shards);
      const std::vector<int64_t> counts = s.counts();
      ASSERT_EQ(counts.size(), static_cast<size_t>(shards));
      int64_t total = 0, next = 0;
      for (int r = 0; r < shards; ++r) {
        EXPECT_EQ(counts[r], s.num_local(r));
        // Balanced: sizes differ by at most one, the larger blocks first.
        EXPECT_TRUE(counts[r] == n / shards || counts[r] == n / shards + 1);
        if (r > 0) EXPECT_LE(counts[r], counts[r - 1]);
        // Contiguous blocks in shard order.
        EXPECT_EQ(s.first_expert(r), next);
        for (int64_t e = s.first_expert(r); e < s.first_expert(r) + s.num_local(r); ++e) {
          EXPECT_EQ(s.owner(e), r) << "expert " << e;
        }
        next += counts[r];
        total += counts[r];
      }
      EXPECT_EQ(total, n);
      // Every expert has exactly one owner, and it lies in range.
      std::vector<int> per_shard(shards, 0);
      for (int64_t e = 0; e < n; ++e) {
        const int o = s.owner(e);
        ASSERT_GE(o, 0);
        ASSERT_LT(o, shards);
        ++per_shard[o];
      }
      for (int r = 0; r < shards; ++r) EXPECT_EQ(per_shard[r], counts[r]);
      if (n < shards) {
        for (int r = static_cast<int>(n); r < shards; ++r) EXPECT_EQ(s.num_local(r), 0) << "shard " << r;
      }
    }
  }
}

TEST(ExpertShardingTest, FewerExpertsThanShardsLeavesEmptyShards) {
  ExpertSharding s(3, 5);
  EXPECT_EQ(s.counts(), (std::vector<int64_t>{1, 1, 1, 0, 0}));
  EXPECT_EQ(s.describe(),
            "rank 0: expert 0; rank 1: expert 1; rank 2: expert 2; rank 3: no experts; rank 4: no experts");
}

TEST(ExpertShardingTest, DescribeOneShard) {
  EXPECT_EQ(ExpertSharding(8, 1).describe(), "rank 0: experts 0-7");
  EXPECT_EQ(ExpertSharding(1, 1).describe(), "rank 0: expert 0");
  EXPECT_EQ(ExpertSharding(8, 2).describe(), "rank 0: experts 0-3; rank 1: experts 4-7");
}

TEST(ExpertShardingTest, RejectsBadArguments) {
  EXPECT_THROW(ExpertSharding(0, 2), std::invalid_argument);
  EXPECT_THROW(ExpertSharding(4, 0), std::invalid_argument);
  ExpertSharding s(4, 2);
  EXPECT_THROW(s.owner(-1), std::out_of_range);
  EXPECT_THROW(s.owner(4), std::out_of_range);
}

// ---- rank_slice -----------------------------------------------------------------

TEST(RankSliceTest, FortyOneRowsOverFourRanks) {
  using dsk::core::rank_slice;
  const std::vector<std::pair<int64_t, int64_t>> want = {{0, 11}, {11, 10}, {21, 10}, {31, 10}};
  for (int r = 0; r < 4; ++r) EXPECT_EQ(rank_slice(41, r, 4), want[r]) << "rank " << r;
}

TEST(RankSliceTest, CoversEveryRowExactlyOnce) {
  using dsk::core::rank_slice;
  for (int64_t total = 0; total <= 50; ++total) {
    for (int world = 1; world <= 8; ++world) {
      SCOPED_TRACE("total=" + std::to_string(total) + " world=" + std::to_string(world));
      std::vector<int> hits(total, 0);
      int64_t next = 0;
      for (int r = 0; r < world; ++r) {
        const auto [first, count] = rank_slice(total, r, world);
        EXPECT_EQ(first, next);  // contiguous, in rank order
        EXPECT_TRUE(count == total / world || count == total / world + 1);
        for (int64_t i = first; i < first + count; ++i) {
          ASSERT_LT(i, total);
          ++hits[i];
        }
        next = first + count;
      }
      EXPECT_EQ(next, total);
      for (int64_t i = 0; i < total; ++i) EXPECT_EQ(hits[i], 1) << "row " << i;
    }
  }
}

// ---- EpochSampler ---------------------------------------------------------------

TEST(EpochSamplerTest, EachEpochIsAPermutation) {
  dsk::core::EpochSampler sampler(37, 5);
  for (int64_t epoch = 0; epoch < 4; ++epoch) {
    EXPECT_TRUE(is_permutation_of_range(sampler.indices(epoch * 37, 37), 37)) << "epoch " << epoch;
    EXPECT_EQ(sampler.epoch_of(epoch * 37), epoch);
    EXPECT_EQ(sampler.epoch_of(epoch * 37 + 36), epoch);
  }
}

TEST(EpochSamplerTest, RangeAcrossEpochBoundaryJoinsTheEpochs) {
  const int64_t n = 10;
  dsk::core::EpochSampler sampler(n, 3);
  const std::vector<int64_t> e0 = to_vector(sampler.indices(0, n));
  const std::vector<int64_t> e1 = to_vector(sampler.indices(n, n));
  const std::vector<int64_t> e2 = to_vector(sampler.indices(2 * n, n));
  // Positions 7..24: the tail of epoch 0, all of epoch 1, the head of epoch 2.
  dsk::core::EpochSampler fresh(n, 3);
  const std::vector<int64_t> span = to_vector(fresh.indices(7, 18));
  std::vector<int64_t> want(e0.begin() + 7, e0.end());
  want.insert(want.end(), e1.begin(), e1.end());
  want.insert(want.end(), e2.begin(), e2.begin() + 5);
  EXPECT_EQ(span, want);
  EXPECT_EQ(sampler.indices(5, 0).numel(), 0);
}

TEST(EpochSamplerTest, DeterministicAndIndependentOfCallOrder) {
  dsk::core::EpochSampler a(50, 11), b(50, 11);
  const std::vector<int64_t> a1 = to_vector(a.indices(50, 50));  // epoch 1 first
  const std::vector<int64_t> a0 = to_vector(a.indices(0, 50));
  EXPECT_EQ(to_vector(b.indices(0, 50)), a0);
  EXPECT_EQ(to_vector(b.indices(50, 50)), a1);
  // Chunked reads equal one read.
  dsk::core::EpochSampler c(50, 11);
  std::vector<int64_t> chunked;
  for (int64_t cursor = 0; cursor < 100; cursor += 13) {
    const std::vector<int64_t> part = to_vector(c.indices(cursor, std::min<int64_t>(13, 100 - cursor)));
    chunked.insert(chunked.end(), part.begin(), part.end());
  }
  std::vector<int64_t> whole = a0;
  whole.insert(whole.end(), a1.begin(), a1.end());
  EXPECT_EQ(chunked, whole);
}

TEST(EpochSamplerTest, EpochsAndSeedsDiffer) {
  dsk::core::EpochSampler s(100, 1), other_seed(100, 2);
  const std::vector<int64_t> e0 = to_vector(s.indices(0, 100));
  const std::vector<int64_t> e1 = to_vector(s.indices(100, 100));
  const std::vector<int64_t> e2 = to_vector(s.indices(200, 100));
  EXPECT_NE(e0, e1);
  EXPECT_NE(e1, e2);
  EXPECT_NE(e0, e2);
  EXPECT_NE(to_vector(other_seed.indices(0, 100)), e0);
}

TEST(EpochSamplerTest, RejectsEmptyDataSet) {
  EXPECT_THROW(dsk::core::EpochSampler(0, 1), std::invalid_argument);
}

// ---- apply_override -------------------------------------------------------------

TEST(ApplyOverrideTest, SetsNestedScalar) {
  dsk::proto::Config c;
  dsk::launch::apply_override(c, "model.gate.k=4");
  EXPECT_EQ(c.model().gate().k(), 4);
  dsk::launch::apply_override(c, "trainer.learning_rate=0.25");
  EXPECT_DOUBLE_EQ(c.trainer().learning_rate(), 0.25);
  dsk::launch::apply_override(c, "trainer.steps=7");
  dsk::launch::apply_override(c, "trainer.steps=9");  // last one wins
  EXPECT_EQ(c.trainer().steps(), 9);
  dsk::launch::apply_override(c, "model.gate.per_example=false");
  EXPECT_FALSE(c.model().gate().per_example());
}

TEST(ApplyOverrideTest, SetsEnumByName) {
  dsk::proto::Config c;
  dsk::launch::apply_override(c, "model.gate.type=TOP_K");
  EXPECT_EQ(c.model().gate().type(), dsk::proto::GateConfig::TOP_K);
  dsk::launch::apply_override(c, "data.type=SYNTHETIC");
  EXPECT_EQ(c.data().type(), dsk::proto::DataConfig::SYNTHETIC);
  EXPECT_THROW(dsk::launch::apply_override(c, "model.gate.type=NOT_A_GATE"), dsk::UsageError);
}

TEST(ApplyOverrideTest, ReplacesRepeatedField) {
  dsk::proto::Config c;
  c.mutable_model()->add_tower_hidden(99);
  dsk::launch::apply_override(c, "model.tower_hidden=[8, 4]");
  ASSERT_EQ(c.model().tower_hidden_size(), 2);
  EXPECT_EQ(c.model().tower_hidden(0), 8);
  EXPECT_EQ(c.model().tower_hidden(1), 4);
  dsk::launch::apply_override(c, "model.expert.hidden=[32,16,8]");
  ASSERT_EQ(c.model().expert().hidden_size(), 3);
  EXPECT_EQ(c.model().expert().hidden(2), 8);
}

TEST(ApplyOverrideTest, StringUnquotedOrQuoted) {
  dsk::proto::Config c;
  dsk::launch::apply_override(c, "data.path=/tmp/some dir/fashion");
  EXPECT_EQ(c.data().path(), "/tmp/some dir/fashion");
  dsk::launch::apply_override(c, "data.path=\"/quoted\"");
  EXPECT_EQ(c.data().path(), "/quoted");
  dsk::launch::apply_override(c, "trainer.device=cpu");
  EXPECT_EQ(c.trainer().device(), "cpu");
}

void expect_usage_error_naming(const std::string& assignment, const std::vector<std::string>& needles) {
  dsk::proto::Config c;
  try {
    dsk::launch::apply_override(c, assignment);
    ADD_FAILURE() << assignment << ": no UsageError";
  } catch (const dsk::UsageError& e) {
    const std::string msg = e.what();
    for (const std::string& n : needles) EXPECT_NE(msg.find(n), std::string::npos) << "'" << msg << "' lacks " << n;
    EXPECT_EQ(msg.find('\n'), std::string::npos) << "one line: " << msg;
  } catch (const std::exception& e) {
    ADD_FAILURE() << assignment << ": threw a non-UsageError: " << e.what();
  }
}

TEST(ApplyOverrideTest, UnknownFieldThrowsUsageErrorNamingIt) {
  expect_usage_error_naming("trainer.nope=1", {"nope", "trainer.nope=1", "TrainerConfig"});
  expect_usage_error_naming("nope.x=1", {"'nope'", "nope.x=1"});
  expect_usage_error_naming("model.gate.bogus_field=2", {"bogus_field"});
  expect_usage_error_naming("trainer.steps=abc", {"trainer.steps", "abc"});
  expect_usage_error_naming("trainer.steps.x=1", {"steps", "trainer.steps.x"});
  expect_usage_error_naming("no_equals_sign", {"no_equals_sign", "PATH=VALUE"});
  expect_usage_error_naming("=3", {"PATH=VALUE"});
}

// ---- JSON numbers ---------------------------------------------------------------

TEST(JsonNumberTest, SeventeenDigitsRoundTripExactly) {
  const std::vector<double> values = {0.1,
                                      1.0 / 3.0,
                                      2.0 / 3.0,
                                      -123456.789e-300,
                                      std::nextafter(1.0, 2.0),
                                      std::numeric_limits<double>::max(),
                                      std::numeric_limits<double>::min(),
                                      std::numeric_limits<double>::denorm_min(),
                                      std::numeric_limits<double>::epsilon(),
                                      0.0,
                                      -0.0,
                                      6.02214076e23};
  for (double v : values) {
    const std::string text = dsk::launch::json_number(v);
    const double back = std::strtod(text.c_str(), nullptr);
    EXPECT_EQ(std::memcmp(&back, &v, sizeof v), 0) << text << " != " << v;
  }
  EXPECT_EQ(dsk::launch::json_number(1.0), "1");
  EXPECT_EQ(dsk::launch::json_number(0.5), "0.5");
  EXPECT_EQ(dsk::launch::json_number(0.1), "0.10000000000000001");
}

TEST(JsonNumberTest, NonFiniteIsNull) {
  EXPECT_EQ(dsk::launch::json_number(std::numeric_limits<double>::infinity()), "null");
  EXPECT_EQ(dsk::launch::json_number(-std::numeric_limits<double>::infinity()), "null");
  EXPECT_EQ(dsk::launch::json_number(std::numeric_limits<double>::quiet_NaN()), "null");
}

TEST(JsonObjectTest, KeysInInsertionOrder) {
  dsk::launch::JsonObject o;
  o.add("step", int64_t{3})
      .add("loss", 0.25)
      .add("name", std::string("a\"b\\c"))
      .add("bad", std::numeric_limits<double>::infinity())
      .add("xs", std::vector<double>{1.5, -2.0})
      .add("ns", std::vector<int64_t>{1, 2, 3})
      .add("empty", std::vector<double>{});
  EXPECT_EQ(o.str(),
            "{\"step\": 3, \"loss\": 0.25, \"name\": \"a\\\"b\\\\c\", \"bad\": null, "
            "\"xs\": [1.5, -2], \"ns\": [1, 2, 3], \"empty\": []}");
  EXPECT_EQ(dsk::launch::JsonObject().str(), "{}");
}

}  // namespace
