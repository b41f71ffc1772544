// Dataset files: parsing and checking (see dataset_spec.h and datasets/README.md).
#include "data/dataset_spec.h"
#include "common/error.h"
#include "common/hash.h"
#include "common/runtime.h"
#include "common/yaml_util.h"

#include <yaml-cpp/yaml.h>

#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <random>
#include <set>

namespace fs = std::filesystem;

namespace bb {

std::vector<bool> HoldOut::mask(size_t n, const std::string& cls) const {
  std::vector<bool> m(n, false);
  if (part == Part::all) return m;
  std::vector<size_t> order(n);
  for (size_t i = 0; i < n; ++i) order[i] = i;
  uint64_t h = seed;  // FNV-1a of the class name, mixed into the seed
  for (unsigned char c : cls) h = (h ^ c) * 0x100000001b3ULL;
  std::mt19937_64 rng(h);
  for (size_t i = 0; i + 1 < n; ++i) {  // Fisher-Yates, explicit (std::shuffle is not portable)
    size_t j = i + (size_t)(rng() % (uint64_t)(n - i));
    std::swap(order[i], order[j]);
  }
  for (int64_t k = 0; k < per_class && k < (int64_t)n; ++k) m[order[k]] = true;
  return m;
}

std::string HoldOut::describe() const {
  if (part == Part::all) return "";
  return std::string(part == Part::held ? ":holdout" : ":minus-holdout") + std::to_string(per_class) + "/" +
         std::to_string(seed);
}

namespace {

// "file:line" of a node.
std::string at(const std::string& file, const YAML::Node& n) { return yaml_at(file, n); }

std::string scalar(const std::string& file, const YAML::Node& n, const std::string& key) {
  BB_CHECK(n.IsScalar(), at(file, n), ": '", key, "' must be a single value");
  return n.Scalar();
}

int64_t as_int(const std::string& file, const YAML::Node& n, const std::string& key, int64_t lo) {
  const std::string s = scalar(file, n, key);
  char* end = nullptr;
  errno = 0;
  const long long v = std::strtoll(s.c_str(), &end, 10);
  BB_CHECK(!s.empty() && end && *end == 0 && errno == 0 && v >= lo, at(file, n), ": '", key,
           "' must be an integer >= ", lo, ", got '", s, "'");
  return v;
}

// A seed: decimal, or hexadecimal with 0x.
uint64_t as_seed(const std::string& file, const YAML::Node& n, const std::string& key) {
  const std::string s = scalar(file, n, key);
  const bool hex = s.size() > 2 && s[0] == '0' && (s[1] == 'x' || s[1] == 'X');
  const std::string digits = hex ? s.substr(2) : s;
  bool ok = !digits.empty() && digits.size() <= (hex ? 16u : 20u);
  for (char c : digits) ok = ok && (hex ? std::isxdigit((unsigned char)c) : std::isdigit((unsigned char)c));
  errno = 0;
  const unsigned long long v = ok ? std::strtoull(digits.c_str(), nullptr, hex ? 16 : 10) : 0;
  BB_CHECK(ok && errno == 0, at(file, n), ": '", key, "' must be a non-negative integer (decimal or 0x hex), got '",
           s, "'");
  return v;
}

float as_float(const std::string& file, const YAML::Node& n, const std::string& key) {
  const std::string s = scalar(file, n, key);
  char* end = nullptr;
  const double v = std::strtod(s.c_str(), &end);
  BB_CHECK(!s.empty() && end && *end == 0 && std::isfinite(v), at(file, n), ": '", key,
           "' must be a number, got '", s, "'");
  return (float)v;
}

bool plain_name(const std::string& s) {
  if (s.empty() || s.size() > 200 || s == "." || s == "..") return false;
  for (char c : s)
    if (!(std::isalnum((unsigned char)c) || c == '_' || c == '-' || c == '.')) return false;
  return true;
}

std::string one_of(const std::string& file, const YAML::Node& n, const std::string& key,
                   const std::vector<std::string>& values) {
  const std::string s = scalar(file, n, key);
  std::string list;
  for (auto& v : values) {
    if (v == s) return s;
    list += (list.empty() ? "" : ", ") + v;
  }
  BB_THROW(at(file, n), ": '", key, "' must be one of ", list, "; got '", s, "'");
}

SpecValue spec_value(const std::string& file, const YAML::Node& n, const std::string& key) {
  SpecValue v;
  v.text = scalar(file, n, key);
  v.where = at(file, n);
  v.given = true;
  BB_CHECK(!v.text.empty(), v.where, ": '", key, "' is empty");
  return v;
}

std::string float_text(float f) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.9g", (double)f);
  return buf;
}

std::vector<float> float_list(const std::string& file, const YAML::Node& n, const std::string& key) {
  std::vector<float> out;
  if (n.IsScalar()) return {as_float(file, n, key)};
  BB_CHECK(n.IsSequence() && n.size() >= 1, at(file, n), ": '", key, "' must be a number or a list of numbers");
  for (const auto& e : n) out.push_back(as_float(file, e, key));
  return out;
}

// preprocess: cifar | imagenet | mnist, or {resize, crop, size, mean, std}.
void parse_preprocess(const std::string& file, const YAML::Node& n, DatasetSpec& s) {
  s.where_preprocess = at(file, n);
  if (n.IsScalar()) {
    const std::string p = one_of(file, n, "preprocess", {"cifar", "imagenet", "mnist"});
    s.pre = p == "cifar" ? Preprocess::cifar() : p == "imagenet" ? Preprocess::imagenet() : Preprocess::mnist();
    s.preset = true;
    s.preprocess_text = p;
    return;
  }
  BB_CHECK(n.IsMap(), at(file, n), ": 'preprocess' must be cifar, imagenet, mnist or a mapping of resize, crop, "
                                   "size, mean, std");
  yaml_check_keys(file, n, {"resize", "crop", "size", "mean", "std"}, "preprocess");
  s.preset = false;
  Preprocess p;
  p.resize = n["resize"] ? as_int(file, n["resize"], "resize", 1) : 0;
  p.crop = n["crop"] ? as_int(file, n["crop"], "crop", 1) : 0;
  p.size = n["size"] ? as_int(file, n["size"], "size", 1) : 0;
  BB_CHECK(n["mean"], at(file, n), ": preprocess needs 'mean' (per channel, of pixel values scaled to [0, 1])");
  BB_CHECK(n["std"], at(file, n), ": preprocess needs 'std' (per channel)");
  p.mean = float_list(file, n["mean"], "mean");
  p.std = float_list(file, n["std"], "std");
  BB_CHECK(p.mean.size() == p.std.size() && (p.mean.size() == 1 || p.mean.size() == 3), at(file, n["std"]),
           ": 'mean' and 'std' must both hold 1 or 3 values (got ", p.mean.size(), " and ", p.std.size(), ")");
  for (float v : p.std) BB_CHECK(v > 0, at(file, n["std"]), ": 'std' values must be > 0");
  BB_CHECK(p.size == 0 || (p.resize == 0 && p.crop == 0), at(file, n["size"]),
           ": 'size' (images must already be size x size) excludes 'resize' and 'crop'");
  BB_CHECK(p.resize == 0 || p.crop > 0, at(file, n["resize"]),
           ": 'resize' needs 'crop' (a resize of the short side alone gives images of different sizes)");
  BB_CHECK(p.resize == 0 || p.crop <= p.resize, at(file, n["crop"]), ": 'crop' ", p.crop,
           " is larger than 'resize' ", p.resize);
  BB_CHECK(p.size > 0 || p.crop > 0, at(file, n), ": preprocess needs 'size' (fixed-size images) or 'crop' "
                                                  "(with optional 'resize') so that every image has one shape");
  p.kind = p.crop > 0 ? "imagenet" : "cifar";
  std::string t = "resize=" + std::to_string(p.resize) + ",crop=" + std::to_string(p.crop) +
                  ",size=" + std::to_string(p.size) + ",mean=";
  for (size_t i = 0; i < p.mean.size(); ++i) t += (i ? "/" : "") + float_text(p.mean[i]);
  t += ",std=";
  for (size_t i = 0; i < p.std.size(); ++i) t += (i ? "/" : "") + float_text(p.std[i]);
  s.preprocess_text = t;
  s.pre = p;
}

}  // namespace

std::string DatasetSpec::canonical() const {
  std::string t = "name=" + name + "\nformat=" + format + "\nfamily=" + family + "\n";
  for (auto& p : paths) t += "path=" + p.text + "\n";
  if (classes.given) t += "classes=" + classes.text + "\n";
  if (labels.given) t += "labels=" + labels.text + "\n";
  t += "preprocess=" + preprocess_text + "\nlimit=" + std::to_string(limit) + "\nsubset=" + subset.describe() + "\n";
  return t;
}

std::string dataset_configs_dir() { return source_dir() + "/configs/datasets"; }

std::string dataset_spec_file(const std::string& arg) {
  if (arg.empty()) return "";
  auto ends_with = [&](const std::string& suf) {
    return arg.size() >= suf.size() && arg.compare(arg.size() - suf.size(), suf.size(), suf) == 0;
  };
  if (arg.find('/') != std::string::npos || ends_with(".yaml") || ends_with(".yml")) return arg;
  if (!plain_name(arg)) return "";
  const std::string f = dataset_configs_dir() + "/" + arg + ".yaml";
  return fs::is_regular_file(f) ? f : "";
}

DatasetSpec load_dataset_spec(const std::string& file) {
  YAML::Node n = yaml_load_map(file, "dataset file");
  yaml_check_keys(file, n,
             {"name", "description", "format", "path", "preprocess", "family", "role", "default_calibration",
              "classes", "labels", "limit", "subset"},
             "a dataset file");
  const std::string top = at(file, n);
  for (const char* k : {"name", "format", "path", "preprocess"})
    BB_CHECK(n[k], top, ": missing key '", k, "'");
  DatasetSpec s;
  s.file = file;
  s.name = scalar(file, n["name"], "name");
  s.where_name = at(file, n["name"]);
  BB_CHECK(plain_name(s.name), s.where_name, ": 'name' '", s.name,
           "' must be a plain name (letters, digits, '_', '-', '.'): it names tables and plots");
  if (n["description"]) s.description = scalar(file, n["description"], "description");
  s.format = one_of(file, n["format"], "format", {"cifar-binary", "imagefolder", "imagenet-val", "mnist-idx"});
  s.where_format = at(file, n["format"]);
  if (n["path"].IsSequence()) {
    BB_CHECK(s.format == "cifar-binary", at(file, n["path"]),
             ": 'path' is a list; only format cifar-binary reads several files (one dataset, in order)");
    BB_CHECK(n["path"].size() >= 1, at(file, n["path"]), ": 'path' is an empty list");
    for (const auto& e : n["path"]) s.paths.push_back(spec_value(file, e, "path"));
  } else {
    s.paths.push_back(spec_value(file, n["path"], "path"));
  }
  parse_preprocess(file, n["preprocess"], s);
  if (n["family"]) {
    s.family = scalar(file, n["family"], "family");
    BB_CHECK(plain_name(s.family), at(file, n["family"]), ": 'family' must be a plain name (cifar10, imagenet, mnist)");
  } else {
    BB_CHECK(s.preset, at(file, n["preprocess"]),
             ": with explicit preprocessing, give 'family' (cifar10, imagenet or mnist: the models it feeds)");
    s.family = s.preprocess_text == "cifar" ? "cifar10" : s.preprocess_text;
  }
  if (n["role"]) s.role = one_of(file, n["role"], "role", {"test", "validation", "train"});
  if (n["default_calibration"]) {
    const std::string b = one_of(file, n["default_calibration"], "default_calibration", {"true", "false"});
    s.default_calibration = b == "true";
  }
  if (n["classes"]) s.classes = spec_value(file, n["classes"], "classes");
  if (n["labels"]) s.labels = spec_value(file, n["labels"], "labels");
  if (n["limit"]) {
    s.limit = as_int(file, n["limit"], "limit", 1);
    s.where_limit = at(file, n["limit"]);
  }
  if (n["subset"]) {
    const YAML::Node& sub = n["subset"];
    s.where_subset = at(file, sub);
    BB_CHECK(sub.IsMap(), s.where_subset, ": 'subset' must be a mapping {part: held | rest, per_class: N, seed: S}");
    yaml_check_keys(file, sub, {"part", "per_class", "seed"}, "subset");
    for (const char* k : {"part", "per_class", "seed"}) BB_CHECK(sub[k], s.where_subset, ": subset needs '", k, "'");
    s.subset.part = one_of(file, sub["part"], "part", {"held", "rest"}) == "held" ? HoldOut::Part::held
                                                                                  : HoldOut::Part::rest;
    s.subset.per_class = as_int(file, sub["per_class"], "per_class", 1);
    s.subset.seed = as_seed(file, sub["seed"], "seed");
  }

  // What goes with what.
  const std::string& f = s.format;
  if (s.preset && s.preprocess_text == "mnist")
    BB_CHECK(f == "mnist-idx", s.where_preprocess, ": preprocess 'mnist' (1-channel 28x28 -> 32x32) applies to "
             "format mnist-idx only");
  if (f == "mnist-idx") {
    BB_CHECK(!s.preset || s.preprocess_text == "mnist", s.where_preprocess, ": format mnist-idx holds 1-channel "
             "images: use preprocess 'mnist' or explicit settings with one mean and std");
    BB_CHECK(s.preset || s.pre.mean.size() == 1, s.where_preprocess,
             ": format mnist-idx holds 1-channel images: give one 'mean' and one 'std'");
    BB_CHECK(s.labels.given, top, ": format mnist-idx needs 'labels' (the IDX label file; 'path' is the image file)");
  } else {
    BB_CHECK(!s.labels.given || f != "cifar-binary", s.labels.where,
             ": format cifar-binary stores its labels in the records; 'labels' does not apply");
  }
  BB_CHECK(!s.classes.given || f == "imagefolder" || f == "imagenet-val", s.classes.where,
           ": 'classes' applies to formats imagefolder and imagenet-val (", f, " has 10 classes)");
  BB_CHECK(s.subset.part == HoldOut::Part::all || f == "imagefolder", s.where_subset,
           ": 'subset' (a per-class hold-out) applies to format imagefolder with class subfolders");
  BB_CHECK(s.subset.part == HoldOut::Part::all || !s.labels.given, s.where_subset,
           ": 'subset' needs class subfolders; it does not apply with a 'labels' file");
  BB_CHECK(!(f == "imagefolder" && s.labels.given && !s.classes.given && s.family != "imagenet"), s.labels.where,
           ": a flat image folder with a 'labels' file needs 'classes' (the class list; a label is an index into "
           "it or one of its names)");
  return s;
}

DatasetSpec dataset_spec(const std::string& name_or_path) {
  const std::string file = dataset_spec_file(name_or_path);
  if (file.empty()) {
    std::string known;
    for (auto& k : dataset_names()) known += (known.empty() ? "" : ", ") + k;
    BB_THROW("unknown dataset '", name_or_path, "' (known: ", known,
             "; or give the path of a dataset YAML file, see datasets/README.md)");
  }
  DatasetSpec s = load_dataset_spec(file);
  if (file != name_or_path) {
    BB_CHECK(s.name == name_or_path, s.where_name, ": 'name' must be '", name_or_path,
             "', the file's name (registered datasets are configs/datasets/<name>.yaml)");
  } else {
    const std::string reg = dataset_configs_dir() + "/" + s.name + ".yaml";
    BB_CHECK(!fs::is_regular_file(reg) || fs::equivalent(reg, file), s.where_name, ": 'name' '", s.name,
             "' is a registered dataset (", reg, "); a dataset file given by path needs a name of its own");
  }
  return s;
}

}  // namespace bb
