// `external`: bring your own method as two shell commands (src/methods/external.h,
// docs/ADDING_A_METHOD.md "An external method").
//
// encode  /bin/sh -c ENCODE with {weights} {layer_weights} {layers} {calib} {calib_labels} {out}
//         {seed} substituted; every regular file it leaves in {out} is one payload file.
// record  the payload files are the sections of the first listed layer's record (section name =
//         file name; component by name: codebook* -> codebook, side* -> side, else indices); the
//         other layers' records hold no section. Bits are the bytes the container writes for
//         them: payload bytes plus each record's own header (name, method, shape, estimate,
//         section headers), as for every method.
// decode  the payload files written to a fresh {payload} folder, /bin/sh -c DECODE with {payload}
//         and {out} (a .pt path) substituted; {out} must hold exactly one finite floating tensor
//         "<layer>.weight" of the record's shape per record. The command comes from the file's
//         provenance (params.decode), so `bitbench decompress` runs it too.
// Every failure (exit status, signal, timeout, missing/extra/mis-shaped/non-finite tensors) is a
// bb::Error with the command's output tail; the temp folders are removed in every case.
#include "methods/external.h"

#include "common/error.h"
#include "common/fs_util.h"
#include "common/log.h"
#include "data/loader.h"
#include "methods/method.h"
#include "models/weights_io.h"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <map>
#include <sstream>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <thread>

extern char** environ;

namespace fs = std::filesystem;

namespace bb {

namespace {

std::mutex g_allow_mu;
std::optional<std::set<std::string>> g_allowed;  // unset: every command may run

// A folder under the system temp dir, removed with everything in it on destruction. Its path is
// substituted into shell commands, so it may hold only characters that need no quoting.
struct ScratchDir {
  std::string path;
  ScratchDir() {
    std::error_code ec;
    fs::path base = fs::temp_directory_path(ec);
    BB_CHECK(!ec, "external: no system temp folder (", ec.message(), ")");
    std::string tmpl = (base / "bb-external-XXXXXX").string();
    for (char c : tmpl)
      BB_CHECK(std::isalnum((unsigned char)c) || c == '/' || c == '.' || c == '_' || c == '-' || c == '+',
               "external: the temp folder path '", printable(tmpl),
               "' holds a character that would need shell quoting; set TMPDIR to a plain path");
    BB_CHECK(mkdtemp(tmpl.data()) != nullptr, "external: cannot create a temp folder under '", base.string(), "'");
    path = tmpl;
  }
  ~ScratchDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;
  std::string operator/(const std::string& name) const { return path + "/" + name; }
};

std::string tail_of_file(const std::string& path, size_t max_bytes = 2000, int max_lines = 20) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return "";
  f.seekg(0, std::ios::end);
  const std::streamoff size = f.tellg();
  const std::streamoff from = size > (std::streamoff)max_bytes ? size - (std::streamoff)max_bytes : 0;
  f.seekg(from);
  std::string s((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r' || s.back() == ' ')) s.pop_back();
  int lines = 0;
  for (size_t i = s.size(); i-- > 0;)
    if (s[i] == '\n' && ++lines >= max_lines) {
      s = s.substr(i + 1);
      break;
    }
  return s;
}

// {name} -> value for the given names; other braces are left alone (commands may hold code).
std::string substitute(const std::string& cmd, const std::map<std::string, std::string>& values) {
  std::string out;
  for (size_t i = 0; i < cmd.size();) {
    bool done = false;
    if (cmd[i] == '{') {
      for (const auto& kv : values) {
        const std::string key = "{" + kv.first + "}";
        if (cmd.compare(i, key.size(), key) == 0) {
          out += kv.second;
          i += key.size();
          done = true;
          break;
        }
      }
    }
    if (!done) out += cmd[i++];
  }
  return out;
}

bool mentions(const std::string& cmd, const std::string& name) { return cmd.find("{" + name + "}") != std::string::npos; }

// Payload file names: plain names, so that a hostile file can name nothing outside {payload}.
bool valid_payload_name(const std::string& n) {
  if (n.empty() || n.size() > 128 || n[0] == '.') return false;
  for (char c : n)
    if (!(std::isalnum((unsigned char)c) || c == '.' || c == '_' || c == '-')) return false;
  return true;
}

Component component_of(const std::string& file) {
  if (file.rfind("codebook", 0) == 0) return Component::codebook;
  if (file.rfind("side", 0) == 0) return Component::side;
  return Component::indices;
}

std::string describe(const ShellResult& r, double timeout_s) {
  std::string s;
  if (r.timed_out)
    s = "timed out after " + std::to_string(timeout_s) + " s (timeout_s) and was killed";
  else if (r.signal)
    s = "was killed by signal " + std::to_string(r.signal) + " (" + strsignal(r.signal) + ")";
  else if (r.exit_status == 127)
    s = "exited with status 127 (command not found: is the program installed and the path right?)";
  else if (r.exit_status == 126)
    s = "exited with status 126 (command not executable)";
  else
    s = "exited with status " + std::to_string(r.exit_status);
  s += r.log_tail.empty() ? "; it printed nothing" : "; the end of its output:\n" + r.log_tail;
  return s;
}

struct ExternalParams : ParamsBase {
  std::string encode;     // shell command: model -> payload files in {out}
  std::string decode;     // shell command: {payload} -> {out}.pt
  std::string version = "1";  // the user's version of the commands' programs (run identity)
  int calib_images = 0;   // > 0: {calib} / {calib_labels} hold this many calibration images
  double timeout_s = 3600;  // each command is killed after this many seconds
  void bind(ParamBinder& b) override {
    b.field("encode", encode,
            "shell command (/bin/sh -c) writing the payload files into {out}; placeholders {weights} (full state "
            "dict .pt), {layer_weights} (.pt of the listed layers' weights), {layers} (JSON list of the layers), "
            "{calib} {calib_labels} (.pt tensors, with calib_images > 0), {out} (empty folder), {seed}");
    b.field("decode", decode,
            "shell command (/bin/sh -c) rebuilding the weights from the payload files in {payload} into the .pt "
            "file {out}: a dict '<layer>.weight' -> tensor for every listed layer");
    b.field("version", version,
            "your version of the encode/decode programs: the run ID holds the command strings, not the files "
            "they run, so bump this when a script changes");
    b.field("calib_images", calib_images, "calibration images written to {calib} (0: none)");
    b.field("timeout_s", timeout_s, "seconds each command may run before it is killed");
  }
  void validate() override {
    BB_CHECK(!encode.empty() && !decode.empty(),
             "external: set both encode=\"CMD\" and decode=\"CMD\" (docs/ADDING_A_METHOD.md)");
    BB_CHECK(mentions(encode, "out"), "external: the encode command does not mention {out}, the folder for its payload");
    BB_CHECK(mentions(decode, "payload") && mentions(decode, "out"),
             "external: the decode command must mention {payload} (the payload folder) and {out} (the .pt to write)");
    for (const char* k : {"weights", "layer_weights", "layers", "calib", "calib_labels", "seed"})
      BB_CHECK(!mentions(decode, k), "external: the decode command mentions {", k,
               "}: decode sees only the payload ({payload}) and writes {out}");
    BB_CHECK(calib_images >= 0, "external: calib_images must be >= 0");
    BB_CHECK(calib_images > 0 || (!mentions(encode, "calib") && !mentions(encode, "calib_labels")),
             "external: the encode command uses {calib} but calib_images is 0: set calib_images=N");
    BB_CHECK(timeout_s > 0, "external: timeout_s must be positive");
  }
};

class ExternalMethod : public Method {
 public:
  std::string name() const override { return "external"; }
  int algorithm_version() const override { return 1; }
  ParamsBase& params() override { return p_; }
  bool needs_calibration() const override { return p_.calib_images > 0; }
  bool decodes_together() const override { return true; }

  std::vector<LayerRecord> compress(CompressContext& ctx) override {
    torch::NoGradGuard ng;
    const Model& model = *ctx.model;
    ScratchDir tmp;
    const std::string out_dir = tmp / "payload";
    fs::create_directory(out_dir);
    std::map<std::string, std::string> values = {{"out", out_dir}, {"seed", std::to_string(ctx.seed)}};
    if (mentions(p_.encode, "weights")) {
      write_state_dict(model.state(), tmp / "weights.pt");
      values["weights"] = tmp / "weights.pt";
    }
    if (mentions(p_.encode, "layer_weights")) {
      StateDict lw;
      for (const auto& l : model.layers()) lw[l.name + ".weight"] = l.weight().detach();
      write_state_dict(lw, tmp / "layer_weights.pt");
      values["layer_weights"] = tmp / "layer_weights.pt";
    }
    nlohmann::json layers = nlohmann::json::array();
    for (const auto& l : model.layers())
      layers.push_back({{"name", l.name},
                        {"weight", l.name + ".weight"},
                        {"shape", l.weight().sizes().vec()},
                        {"kind", l.is_conv() ? "conv" : "linear"}});
    write_file_atomic(tmp / "layers.json", layers.dump(1) + "\n");
    values["layers"] = tmp / "layers.json";
    if (p_.calib_images > 0) {
      BB_CHECK(ctx.calib, "external: calib_images = ", p_.calib_images, " but no calibration data set was opened");
      const int64_t n = std::min<int64_t>(p_.calib_images, ctx.calib->size());
      Batch b = load_batch(*ctx.calib, sample_indices(ctx.calib->size(), n, ctx.seed));
      std::vector<char> img = torch::pickle_save(c10::IValue(b.images.contiguous()));
      std::vector<char> lab = torch::pickle_save(c10::IValue(b.labels.to(torch::kLong).contiguous()));
      write_file_atomic(tmp / "calib.pt", img.data(), img.size());
      write_file_atomic(tmp / "calib_labels.pt", lab.data(), lab.size());
      values["calib"] = tmp / "calib.pt";
      values["calib_labels"] = tmp / "calib_labels.pt";
    }
    ctx.phase("encode");
    const std::string cmd = substitute(p_.encode, values);
    log_info("external: running the encode command: " + cmd);
    const ShellResult r = run_shell(cmd, tmp / "encode.log", p_.timeout_s);
    BB_CHECK(!r.timed_out && r.signal == 0 && r.exit_status == 0, "external: the encode command ",
             describe(r, p_.timeout_s), "\n(command: ", cmd, ")");

    // The payload: every regular file it left in {out}, by name.
    std::vector<std::string> names;
    for (const auto& e : fs::directory_iterator(out_dir)) {
      const std::string n = e.path().filename().string();
      BB_CHECK(!e.is_symlink() && e.is_regular_file(), "external: the encode command left '", printable(n),
               "' in {out}, which is not a regular file (the payload is a flat folder of files)");
      BB_CHECK(valid_payload_name(n), "external: payload file name '", printable(n),
               "' is not allowed (letters, digits, '.', '_', '-'; not starting with '.'; at most 128 characters)");
      names.push_back(n);
    }
    std::sort(names.begin(), names.end());
    BB_CHECK(names.size() <= 4096, "external: the encode command wrote ", names.size(), " files (at most 4096)");

    std::vector<LayerRecord> out;
    for (const auto& l : model.layers()) {
      LayerRecord rec;
      rec.layer = l.name;
      rec.method = name();
      rec.shape = l.weight().sizes().vec();
      out.push_back(std::move(rec));
    }
    BB_CHECK(!out.empty(), "external: the model has no conv/linear layer");
    for (const auto& n : names) {
      std::vector<unsigned char> bytes = read_file_bytes(out_dir + "/" + n);
      const Component c = component_of(n);
      const double bits = 8.0 * (double)bytes.size();
      (c == Component::indices ? out[0].estimate.index_bits
                               : c == Component::codebook ? out[0].estimate.codebook_bits : out[0].estimate.side_bits) += bits;
      out[0].add(n, c, std::vector<uint8_t>(bytes.begin(), bytes.end()));
    }
    out[0].estimate.fixed_index_bits = out[0].estimate.index_bits;
    ctx.phase("method");
    return out;
  }

  torch::Tensor decode(const LayerRecord& rec) const override {
    BB_THROW("external: layer '", printable(rec.layer), "' is decoded together with the file's other records");
  }

  std::vector<torch::Tensor> decode_together(const std::vector<const LayerRecord*>& recs,
                                             const nlohmann::json& provenance) const override {
    const std::string decode = external_decode_command(provenance);
    BB_CHECK(!decode.empty(), "the file's provenance names no decode command (params.decode of method 'external')");
    {
      std::lock_guard<std::mutex> lk(g_allow_mu);
      BB_CHECK(!g_allowed || g_allowed->count(decode), "external: this process does not run the decode command '",
               printable(decode), "' (only the commands of its own files)");
    }
    double timeout_s = 3600;
    if (provenance["params"].contains("timeout_s") && provenance["params"]["timeout_s"].is_number())
      timeout_s = provenance["params"]["timeout_s"].get<double>();
    BB_CHECK(timeout_s > 0 && timeout_s < 1e9, "the file's provenance has timeout_s = ", timeout_s);

    ScratchDir tmp;
    const std::string payload = tmp / "payload";
    fs::create_directory(payload);
    std::set<std::string> names;
    for (const LayerRecord* rec : recs)
      for (const Section& s : rec->sections) {
        BB_CHECK(valid_payload_name(s.name), "layer '", printable(rec->layer), "': payload file name '",
                 printable(s.name), "' is not allowed");
        BB_CHECK(names.insert(s.name).second, "layer '", printable(rec->layer), "': payload file '", s.name,
                 "' appears twice");
        BB_CHECK(s.component == component_of(s.name), "layer '", printable(rec->layer), "': payload file '", s.name,
                 "' is filed under component ", component_name(s.component), ", its name says ",
                 component_name(component_of(s.name)));
        write_file_atomic(payload + "/" + s.name, s.bytes.data(), s.bytes.size());
      }
    const std::string out_pt = tmp / "decoded.pt";
    const std::string cmd = substitute(decode, {{"payload", payload}, {"out", out_pt}});
    log_info("external: running the decode command: " + cmd);
    const ShellResult r = run_shell(cmd, tmp / "decode.log", timeout_s);
    BB_CHECK(!r.timed_out && r.signal == 0 && r.exit_status == 0, "external: the decode command ",
             describe(r, timeout_s), "\n(command: ", cmd, ")");
    const std::string tail = r.log_tail.empty() ? "" : "; the end of its output:\n" + r.log_tail;
    BB_CHECK(fs::is_regular_file(out_pt), "external: the decode command exited 0 but wrote no file at {out}", tail);
    StateDict sd;
    try {
      sd = read_state_dict(out_pt);
    } catch (const Error& e) {
      BB_THROW("external: the decode command's {out}: ", e.what(), tail);
    }
    std::vector<torch::Tensor> ws;
    std::vector<std::string> missing, extra, problems;
    std::set<std::string> wanted;
    for (const LayerRecord* rec : recs) {
      const std::string key = rec->layer + ".weight";
      wanted.insert(key);
      auto it = sd.find(key);
      if (it == sd.end()) {
        missing.push_back(key);
        ws.emplace_back();
        continue;
      }
      torch::Tensor w = it->second;
      std::vector<int64_t> got(w.sizes().begin(), w.sizes().end());
      std::ostringstream os;
      if (!w.is_floating_point()) {
        os << key << " is " << w.scalar_type() << ", not a floating tensor";
      } else if (got != rec->shape) {
        os << key << " has shape " << w.sizes() << ", the layer's is " << c10::IntArrayRef(rec->shape);
      } else {
        w = w.to(torch::kCPU).to(torch::kFloat32).contiguous();
        const int64_t bad = (~torch::isfinite(w)).sum().item<int64_t>();
        if (bad > 0) os << key << " holds " << bad << " NaN/inf values";
      }
      if (!os.str().empty()) problems.push_back(os.str());
      ws.push_back(w);
    }
    for (const auto& kv : sd)
      if (!wanted.count(kv.first)) extra.push_back(printable(kv.first));
    auto join = [](const std::vector<std::string>& v) {
      std::string s;
      for (size_t i = 0; i < v.size() && i < 8; ++i) s += (i ? ", " : "") + v[i];
      if (v.size() > 8) s += ", ... (" + std::to_string(v.size()) + " in all)";
      return s;
    };
    std::string msg;
    if (!missing.empty()) msg += "; missing tensors: " + join(missing);
    if (!extra.empty()) msg += "; unexpected tensors: " + join(extra);
    if (!problems.empty()) msg += "; " + join(problems);
    BB_CHECK(msg.empty(), "external: the decode command's {out} does not hold exactly one finite weight per layer",
             msg, tail);
    return ws;
  }

 private:
  ExternalParams p_;
};

BB_REGISTER_METHOD("external", ExternalMethod);

}  // namespace

std::string external_decode_command(const nlohmann::json& provenance) {
  if (!provenance.is_object() || provenance.value("method", std::string()) != "external") return "";
  auto it = provenance.find("params");
  if (it == provenance.end() || !it->is_object() || !it->contains("decode") || !(*it)["decode"].is_string()) return "";
  return (*it)["decode"].get<std::string>();
}

void restrict_external_commands(const std::vector<std::string>& allowed) {
  std::lock_guard<std::mutex> lk(g_allow_mu);
  g_allowed = std::set<std::string>(allowed.begin(), allowed.end());
}

void unrestrict_external_commands() {
  std::lock_guard<std::mutex> lk(g_allow_mu);
  g_allowed.reset();
}

ShellResult run_shell(const std::string& command, const std::string& log_path, double timeout_s) {
  ShellResult r;
  posix_spawn_file_actions_t fa;
  posix_spawnattr_t at;
  BB_CHECK(posix_spawn_file_actions_init(&fa) == 0 && posix_spawnattr_init(&at) == 0, "external: posix_spawn setup");
  std::unique_ptr<posix_spawn_file_actions_t, int (*)(posix_spawn_file_actions_t*)> fa_guard(
      &fa, posix_spawn_file_actions_destroy);
  std::unique_ptr<posix_spawnattr_t, int (*)(posix_spawnattr_t*)> at_guard(&at, posix_spawnattr_destroy);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&fa, 1, log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
  posix_spawn_file_actions_adddup2(&fa, 1, 2);
  posix_spawnattr_setflags(&at, POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
  posix_spawnattr_setpgroup(&at, 0);
  sigset_t none, all;
  sigemptyset(&none);
  sigfillset(&all);
  posix_spawnattr_setsigmask(&at, &none);
  posix_spawnattr_setsigdefault(&at, &all);
  const char* argv[] = {"sh", "-c", command.c_str(), nullptr};
  pid_t pid = -1;
  const auto t0 = std::chrono::steady_clock::now();
  const int rc = posix_spawn(&pid, "/bin/sh", &fa, &at, const_cast<char* const*>(argv), environ);
  BB_CHECK(rc == 0, "external: cannot start /bin/sh: ", std::strerror(rc));
  auto elapsed = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(); };
  // Wait for the shell without reaping it (WNOWAIT), so that its process group still exists when
  // it is killed: whatever the command left running in its group goes with it.
  int sleep_ms = 1;
  for (;;) {
    siginfo_t info;
    info.si_pid = 0;
    const int w = waitid(P_PID, (id_t)pid, &info, WEXITED | WNOHANG | WNOWAIT);
    if (w == 0 && info.si_pid == pid) break;
    if (w < 0 && errno != EINTR) break;
    if (elapsed() > timeout_s) {
      r.timed_out = true;
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(sleep_ms));
    sleep_ms = std::min(sleep_ms * 2, 50);
  }
  kill(-pid, SIGKILL);
  int st = 0;
  while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
  }
  r.seconds = elapsed();
  if (!r.timed_out) {
    if (WIFEXITED(st)) r.exit_status = WEXITSTATUS(st);
    if (WIFSIGNALED(st)) r.signal = WTERMSIG(st);
  }
  r.log_tail = tail_of_file(log_path);
  return r;
}

}  // namespace bb
