#include <catch2/catch.hpp>

#include "quant/kmeans.h"

using namespace bb;

TEST_CASE("assign_nearest equals brute force", "[kmeans]") {
  torch::manual_seed(1);
  auto x = torch::randn({3000, 9});
  auto c = torch::randn({37, 9});
  auto fast = assign_nearest(x, c, 1000).first;
  auto ref = assign_nearest_ref(x, c);
  // Ties are measure-zero with random data; allow none.
  REQUIRE(fast.equal(ref));
}

TEST_CASE("kmeans decreases the objective and is deterministic", "[kmeans]") {
  torch::manual_seed(2);
  auto x = torch::cat({torch::randn({500, 4}) + 5, torch::randn({500, 4}) - 5, torch::randn({500, 4})});
  ClusteringParams p;
  p.niter = 20;
  auto a = kmeans(x, 3, p);
  auto b = kmeans(x, 3, p);
  REQUIRE(a.centroids.equal(b.centroids));
  REQUIRE(a.assign.equal(b.assign));
  for (size_t i = 1; i < a.stats.size(); ++i) REQUIRE(a.stats[i].objective <= a.stats[i - 1].objective * (1 + 1e-6));
  // Three well separated blobs of unit variance in 4-D: SSE per point close to 4.
  REQUIRE(a.objective / 1500 < 4.5);
}

TEST_CASE("kmeans terminates on degenerate inputs", "[kmeans]") {
  ClusteringParams p;
  p.niter = 10;
  SECTION("all points equal") {
    auto x = torch::ones({100, 9});
    auto r = kmeans(x, 16, p);
    REQUIRE(r.objective == Approx(0).margin(1e-6));
    REQUIRE(r.centroids.size(0) == 16);
  }
  SECTION("fewer points than clusters") {
    auto x = torch::randn({5, 9});
    auto r = kmeans(x, 256, p);
    REQUIRE(r.objective == Approx(0).margin(1e-5));
    REQUIRE(r.assign.max().item<int64_t>() < 256);
  }
}

TEST_CASE("weighted kmeans ignores zero-weight points", "[kmeans]") {
  auto x = torch::tensor({0.f, 1.f, 10.f, 11.f, 100.f}).unsqueeze(1);
  auto w = torch::tensor({1.f, 1.f, 1.f, 1.f, 0.f});
  ClusteringParams p;
  p.niter = 20;
  auto r = kmeans(x, 2, p, w);
  auto c = std::get<0>(r.centroids.flatten().sort());
  // The zero-weight outlier must not pull a centroid.
  REQUIRE(c[0].item<float>() == Approx(0.5f));
  REQUIRE(c[1].item<float>() == Approx(10.5f));
}
