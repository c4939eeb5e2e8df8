#pragma once
// Reading a job config: protobuf text format, then `--set PATH=VALUE`
// overrides, then validation. Every problem is a UsageError whose one-line
// message names the file (or the --set argument) and the field.
#include <string>
#include <vector>

#include "core/proto/config.pb.h"

namespace dsk::launch {

proto::Config load_config(const std::string& path, const std::vector<std::string>& overrides);

// Applies one "a.b.c=value" to `config` (value in text-format syntax; string
// fields may be given unquoted, repeated fields as [1, 2]).
void apply_override(proto::Config& config, const std::string& assignment);

// Checks ranges and cross-field constraints. `origin` prefixes messages.
void validate_config(const proto::Config& config, const std::string& origin);

}  // namespace dsk::launch
