// bitbench table results/<experiment>    merge run records into table.{json,md,csv} + plots/<model>.<dataset>.{png,svg}
#include "cli/args.h"
#include "common/error.h"
#include "common/fs_util.h"
#include "report/table.h"

#include <cstdio>
#include <filesystem>

namespace bb {
namespace {

int cmd_table(int argc, char** argv) {
  Args a("table", {{"--published", true, "", false, "published rows folder (default experiments/published)"},
                   {"--no-plots", false, "", false, "skip the plots"},
                   {"--replot", false, "", false,
                    "only redraw the plots, from RESULTS_DIR/table.json (no run records needed; tables untouched)"},
                   {"--reformat", false, "", false,
                    "rewrite table.{json,md,csv} from RESULTS_DIR/table.json with this build's writers (no run "
                    "records needed; the rows stay as they were, what derives from them is recomputed)"},
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
  BB_CHECK(!(a.has("--replot") && a.has("--reformat")), "--reformat and --replot exclude each other (run one, then the other)");
  if (a.has("--replot")) {
    BB_CHECK(!a.has("--no-plots"), "--replot and --no-plots exclude each other");
    nlohmann::json t;
    try {
      t = nlohmann::json::parse(read_file_text(dir + "/table.json"));
    } catch (const nlohmann::json::exception& e) {
      BB_THROW("'", dir, "/table.json' is not valid JSON: ", e.what());
    }
    for (auto& p : write_table_plots(t, dir)) std::printf("plot: %s\n", p.c_str());
    return 0;
  }
  if (a.has("--reformat")) {
    const nlohmann::json t = reformat_table(dir);
    if (!a.has("--quiet")) std::fputs(table_markdown(t).c_str(), stdout);
    std::printf("\ntable: %s/table.json, %s/table.md, %s/table.csv (from table.json)\n", dir.c_str(), dir.c_str(), dir.c_str());
    return 0;
  }
  std::vector<std::string> plots;
  const nlohmann::json t = build_table(dir, opt, &plots);
  if (!a.has("--quiet")) std::fputs(table_markdown(t).c_str(), stdout);
  std::printf("\ntable: %s/table.json, %s/table.md, %s/table.csv\n", dir.c_str(), dir.c_str(), dir.c_str());
  for (auto& p : plots) std::printf("plot: %s\n", p.c_str());
  return 0;
}

const bool registered = register_command("table", cmd_table, "merge run records into tables and plots");

}  // namespace
}  // namespace bb
