#include "launch/config.h"

#include <google/protobuf/io/tokenizer.h>
#include <google/protobuf/text_format.h>

#include <ATen/Context.h>

#include <fstream>
#include <sstream>

#include "core/error.h"

namespace dsk::launch {
namespace {

namespace pb = google::protobuf;

// Keeps the first parser error so the user sees one line with its position.
class FirstErrorCollector : public pb::io::ErrorCollector {
 public:
  void AddError(int line, pb::io::ColumnNumber column, const std::string& message) override {
    if (message_.empty()) message_ = std::to_string(line + 1) + ":" + std::to_string(column + 1) + ": " + message;
  }
  void AddWarning(int, pb::io::ColumnNumber, const std::string&) override {}
  const std::string& message() const { return message_; }

 private:
  std::string message_;
};

std::string quoted(const std::string& value) {
  if (value.size() >= 2 && (value.front() == '"' || value.front() == '\'')) return value;
  std::string out = "\"";
  for (char c : value) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out + "\"";
}

}  // namespace

proto::Config load_config(const std::string& path, const std::vector<std::string>& overrides) {
  std::ifstream in(path);
  if (!in) throw UsageError(path + ": cannot open the config file");
  std::stringstream text;
  text << in.rdbuf();

  proto::Config config;
  FirstErrorCollector errors;
  pb::TextFormat::Parser parser;
  parser.RecordErrorsTo(&errors);
  if (!parser.ParseFromString(text.str(), &config)) {
    throw UsageError(path + ":" + errors.message());
  }
  for (const std::string& assignment : overrides) apply_override(config, assignment);
  validate_config(config, path);
  return config;
}

void apply_override(proto::Config& config, const std::string& assignment) {
  const std::string origin = "--set " + assignment;
  const size_t eq = assignment.find('=');
  if (eq == std::string::npos || eq == 0) throw UsageError(origin + ": expected PATH=VALUE");
  const std::string path = assignment.substr(0, eq);
  const std::string value = assignment.substr(eq + 1);

  pb::Message* message = &config;
  size_t start = 0;
  while (true) {
    const size_t dot = path.find('.', start);
    const std::string name = path.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
    const pb::Descriptor* descriptor = message->GetDescriptor();
    const pb::FieldDescriptor* field = descriptor->FindFieldByName(name);
    if (field == nullptr) {
      throw UsageError(origin + ": unknown field '" + name + "' in " + descriptor->full_name());
    }
    if (dot == std::string::npos) {
      message->GetReflection()->ClearField(message, field);
      std::string literal = field->cpp_type() == pb::FieldDescriptor::CPPTYPE_STRING ? quoted(value) : value;
      FirstErrorCollector errors;
      pb::TextFormat::Parser parser;
      parser.RecordErrorsTo(&errors);
      if (!parser.MergeFromString(name + ": " + literal, message)) {
        throw UsageError(origin + ": bad value for " + path + ": " + errors.message());
      }
      return;
    }
    if (field->cpp_type() != pb::FieldDescriptor::CPPTYPE_MESSAGE || field->is_repeated()) {
      throw UsageError(origin + ": '" + name + "' is not a message, so '" + path + "' names nothing");
    }
    message = message->GetReflection()->MutableMessage(message, field);
    start = dot + 1;
  }
}

void validate_config(const proto::Config& config, const std::string& origin) {
  auto fail = [&](const std::string& what) { throw UsageError(origin + ": " + what); };
  const auto& t = config.trainer();
  if (t.steps() < 1) fail("trainer.steps = " + std::to_string(t.steps()) + " must be >= 1");
  if (t.global_batch_size() < 1) fail("trainer.global_batch_size must be >= 1");
  if (!(t.learning_rate() > 0)) fail("trainer.learning_rate must be > 0");
  if (t.log_every() < 1) fail("trainer.log_every must be >= 1");
  if (t.eval_every() < 0) fail("trainer.eval_every must be >= 0 (0 = at the end only)");
  if (t.eval_batch_size() < 1) fail("trainer.eval_batch_size must be >= 1");
  if (t.checkpoint_every() < 0) fail("trainer.checkpoint_every must be >= 0 (0 = only on a signal)");
  if (t.keep_checkpoints() < 0) fail("trainer.keep_checkpoints must be >= 0 (0 = keep all)");
  if (t.threads_per_rank() < 0) fail("trainer.threads_per_rank must be >= 0 (0 = automatic)");
  if (t.device() != "cpu" && t.device() != "cuda") fail("trainer.device = '" + t.device() + "': expected cpu or cuda");
  if (t.device() == "cuda" && !at::hasCUDA()) {
    fail("trainer.device = cuda, but this dsk is linked against a LibTorch without CUDA (or no GPU is visible)");
  }

  const auto& m = config.model();
  if (m.num_experts() < 1) fail("model.num_experts must be >= 1");
  const auto& g = m.gate();
  if (g.type() != proto::GateConfig::SOFTMAX && (g.k() < 1 || g.k() > m.num_experts())) {
    fail("model.gate.k = " + std::to_string(g.k()) + " must be in [1, model.num_experts = " +
         std::to_string(m.num_experts()) + "]");
  }
  if (!(m.capacity_factor() >= 0)) fail("model.capacity_factor must be >= 0 (0 = dropless)");
  if (!(g.gamma() > 0)) fail("model.gate.gamma must be > 0");
  if (g.entropy_reg() < 0) fail("model.gate.entropy_reg must be >= 0");

  const auto& p = config.parallel();
  if (p.expert_parallel_size() < 0) fail("parallel.expert_parallel_size must be >= 0 (0 = all ranks)");
  if (!(p.collective_timeout_s() > 0)) fail("parallel.collective_timeout_s must be > 0");
}

}  // namespace dsk::launch
