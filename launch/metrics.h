#pragma once
// `metrics.jsonl`: one JSON object per line, written by rank 0 and flushed
// per line so a killed job keeps what it logged. Numbers use %.17g, enough
// to compare runs bit for bit.
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

namespace dsk::launch {

// Builds one JSON object; keys are written in insertion order.
class JsonObject {
 public:
  JsonObject& add(const std::string& key, double value);
  JsonObject& add(const std::string& key, int64_t value);
  JsonObject& add(const std::string& key, const std::string& value);
  JsonObject& add(const std::string& key, const std::vector<double>& values);
  JsonObject& add(const std::string& key, const std::vector<int64_t>& values);
  JsonObject& add(const std::string& key, const std::vector<std::vector<double>>& rows);
  std::string str() const { return "{" + body_ + "}"; }

 private:
  void key(const std::string& k);
  std::string body_;
};

class MetricsLog {
 public:
  MetricsLog() = default;
  // Appends to DIR/metrics.jsonl (creating DIR); empty dir = no log.
  explicit MetricsLog(const std::string& dir);
  ~MetricsLog();
  MetricsLog(const MetricsLog&) = delete;
  MetricsLog& operator=(const MetricsLog&) = delete;
  void write(const JsonObject& record);

 private:
  std::FILE* file_ = nullptr;
};

std::string json_number(double value);

}  // namespace dsk::launch
