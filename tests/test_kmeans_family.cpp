// kmeans and hessian_kmeans are one implementation (methods/kmeans.cpp) registered under two names
// that differ only in their defaults (issue 23). Names and parameters are contracts.
#include <catch2/catch.hpp>

#include "methods/method.h"
#include "methods/params.h"

#include <set>
#include <string>

using namespace bb;

TEST_CASE("kmeans and hessian_kmeans: two names with the same parameters and their own defaults", "[kmeans][methods]") {
  REQUIRE(has_method("kmeans"));
  REQUIRE(has_method("hessian_kmeans"));
  auto km = make_method("kmeans");
  auto hk = make_method("hessian_kmeans");
  CHECK(km->name() == "kmeans");
  CHECK(hk->name() == "hessian_kmeans");
  const auto jk = ParamBinder::to_json(km->params());
  const auto jh = ParamBinder::to_json(hk->params());
  std::set<std::string> keys_k, keys_h;
  for (auto it = jk.begin(); it != jk.end(); ++it) keys_k.insert(it.key());
  for (auto it = jh.begin(); it != jh.end(); ++it) keys_h.insert(it.key());
  CHECK(keys_k == keys_h);
  CHECK(keys_k.count("bits"));
  CHECK(keys_k.count("solver"));
  CHECK(keys_k.count("finetune_epochs"));
  // Han et al.'s defaults vs Choi et al.'s.
  CHECK(jk["solver"] == "lloyd");
  CHECK(jh["solver"] == "dp");
  CHECK(jk["scope"] == "layer");
  CHECK(jh["scope"] == "network");
  CHECK(jk["weighting"] == "none");
  CHECK(jh["weighting"] == "hessian");
  CHECK(jk["coder"] == "fixed");
  CHECK(jh["coder"] == "huffman");
  CHECK(jh["hessian_gn_max_classes"] == 0);
  CHECK(jk["hessian_gn_max_classes"] != 0);
  CHECK(jk["init"] == "linear");  // Han et al.'s initialisation, validated (docs/methods/choi.md)
  CHECK(jh["init"] == "kmeans++");
  // Everything else is the same default.
  int differ = 0;
  for (const auto& k : keys_k) differ += jk[k] != jh[k];
  CHECK(differ == 6);
  // The calibration need follows from the defaults: the Hessian needs data, plain k-means not.
  CHECK(!km->needs_calibration());
  CHECK(hk->needs_calibration());
  CHECK(km->algorithm_version() == hk->algorithm_version());
}
