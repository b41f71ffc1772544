// bitbench table results/<experiment>    merge run records into table.{json,md,csv} + plots
#include "cli/args.h"
#include "common/error.h"
#include "report/table.h"

#include <cstdio>
#include <filesystem>

namespace bb {
namespace {

int cmd_table(int argc, char** argv) {
  Args a("table", {{"--published", true, "", false, "published rows folder (default experiments/published)"},
                   {"--no-plots", false, "", false, "skip the plots"},
                   {"--quiet", false, "", false, "do not print table.md"},
                   {"--help", false, "", false, "this help"}});
  a.parse(argc, argv);
  if (a.has("--help")) {
    std::printf("usage: bitbench table RESULTS_DIR\n%s", a.usage().c_str());
    return 0;
  }
  BB_CHECK(a.positional().size() == 1, "table takes exactly one results folder (results/<experiment>)");
  TableOptions opt;
  opt.published_dir = a.get("--published");
  opt.plots = !a.has("--no-plots");
  const std::string dir = a.positional()[0];
  nlohmann::json t = build_table(dir, opt);
  if (!a.has("--quiet")) {
    std::FILE* f = std::fopen((dir + "/table.md").c_str(), "r");
    char buf[4096];
    size_t n;
    while (f && (n = std::fread(buf, 1, sizeof buf, f)) > 0) std::fwrite(buf, 1, n, stdout);
    if (f) std::fclose(f);
  }
  std::printf("\ntable: %s/table.json, %s/table.md, %s/table.csv\n", dir.c_str(), dir.c_str(), dir.c_str());
  if (opt.plots)
    for (auto it = t["models"].begin(); it != t["models"].end(); ++it)
      std::printf("plot: %s/plots/%s.png (and .svg)\n", dir.c_str(), it.key().c_str());
  return 0;
}

const bool registered = register_command("table", cmd_table, "merge run records into tables and plots");

}  // namespace
}  // namespace bb
