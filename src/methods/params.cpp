#include "methods/params.h"
#include "common/error.h"

#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <sstream>

namespace bb {
namespace {

void parse_value(const std::string& s, int64_t& v, const std::string& what) {
  char* end = nullptr;
  errno = 0;
  long long x = std::strtoll(s.c_str(), &end, 10);
  BB_CHECK(!s.empty() && end && *end == 0 && errno == 0, what, " expects an integer, got '", s, "'");
  v = x;
}
void parse_value(const std::string& s, int& v, const std::string& what) {
  int64_t x;
  parse_value(s, x, what);
  BB_CHECK(x >= INT32_MIN && x <= INT32_MAX, what, " is out of range: '", s, "'");
  v = (int)x;
}
void parse_value(const std::string& s, double& v, const std::string& what) {
  char* end = nullptr;
  errno = 0;
  double x = std::strtod(s.c_str(), &end);
  BB_CHECK(!s.empty() && end && *end == 0 && errno == 0, what, " expects a number, got '", s, "'");
  BB_CHECK(std::isfinite(x), what, " expects a finite number, got '", s, "'");
  v = x;
}
void parse_value(const std::string& s, bool& v, const std::string& what) {
  if (s == "true" || s == "1" || s == "yes" || s == "on") v = true;
  else if (s == "false" || s == "0" || s == "no" || s == "off") v = false;
  else BB_THROW(what, " expects true/false, got '", s, "'");
}
void parse_value(const std::string& s, std::string& v, const std::string&) { v = s; }

template <typename T>
std::string show(const T& v) {
  std::ostringstream os;
  os << std::boolalpha << v;
  return os.str();
}

}  // namespace

template <typename T>
void ParamBinder::handle(const std::string& key, T& v, const std::string& doc,
                         const std::vector<std::string>& choices) {
  switch (mode_) {
    case Mode::apply: {
      auto it = values_->find(key);
      if (it == values_->end()) return;
      used_[key] = true;
      parse_value(it->second, v, where_ + ": parameter '" + key + "'");
      if constexpr (std::is_same_v<T, std::string>) {
        if (!choices.empty()) {
          bool ok = false;
          std::string list;
          for (auto& c : choices) {
            ok |= c == v;
            list += (list.empty() ? "" : ", ") + c;
          }
          BB_CHECK(ok, where_, ": parameter '", key, "' must be one of {", list, "}, got '", v, "'");
        }
      }
      break;
    }
    case Mode::to_json:
      json_[key] = v;
      break;
    case Mode::describe: {
      text_ += "  " + key + " = " + show(v) + "\t" + doc;
      if (!choices.empty()) {
        text_ += " {";
        for (size_t i = 0; i < choices.size(); ++i) text_ += (i ? "|" : "") + choices[i];
        text_ += "}";
      }
      text_ += "\n";
      break;
    }
  }
}

void ParamBinder::field(const std::string& key, int& v, const std::string& doc) { handle(key, v, doc, {}); }
void ParamBinder::field(const std::string& key, int64_t& v, const std::string& doc) { handle(key, v, doc, {}); }
void ParamBinder::field(const std::string& key, double& v, const std::string& doc) { handle(key, v, doc, {}); }
void ParamBinder::field(const std::string& key, bool& v, const std::string& doc) { handle(key, v, doc, {}); }
void ParamBinder::field(const std::string& key, std::string& v, const std::string& doc,
                        const std::vector<std::string>& choices) {
  handle(key, v, doc, choices);
}

void ParamBinder::renamed(const std::string& old_key, const std::string& hint) {
  if (mode_ != Mode::apply || !values_->count(old_key)) return;
  BB_THROW(where_, ": parameter '", old_key, "' was renamed: ", hint);
}

void ParamBinder::identity_neutral(const std::string& key, const nlohmann::json& neutral) {
  if (mode_ != Mode::to_json) return;
  BB_CHECK(json_.contains(key), "identity_neutral('", key, "') must follow the field's declaration");
  neutral_[key] = neutral;
}

void ParamBinder::apply(ParamsBase& p, const std::map<std::string, std::string>& values, const std::string& where) {
  ParamBinder b;
  b.mode_ = Mode::apply;
  b.values_ = &values;
  b.where_ = where;
  p.bind(b);
  for (auto& kv : values) {
    if (b.used_.count(kv.first)) continue;
    ParamBinder d;
    d.mode_ = Mode::describe;
    p.bind(d);
    BB_THROW(where, ": unknown parameter '", kv.first, "'; known parameters:\n", d.text_);
  }
  try {
    p.validate();
  } catch (const Error& e) {
    if (where.empty()) throw;
    BB_THROW(where, ": ", e.what());  // a value out of range names the file:line it came from
  }
}

ParamBinder ParamBinder::bound_json(ParamsBase& p) {
  ParamBinder b;
  b.mode_ = Mode::to_json;
  b.json_ = nlohmann::json::object();
  p.bind(b);
  return b;
}

nlohmann::json ParamBinder::to_json(ParamsBase& p) { return bound_json(p).json_; }

nlohmann::json ParamBinder::identity_json(ParamsBase& p) {
  ParamBinder b = bound_json(p);
  for (auto& kv : b.neutral_)
    if (b.json_.at(kv.first) == kv.second) b.json_.erase(kv.first);
  return b.json_;
}

std::string ParamBinder::describe(ParamsBase& p) {
  ParamBinder b;
  b.mode_ = Mode::describe;
  p.bind(b);
  return b.text_;
}

}  // namespace bb
