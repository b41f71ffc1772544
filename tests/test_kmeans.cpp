#include <catch2/catch.hpp>

#include "common/error.h"
#include "quant/kmeans.h"

#include <ATen/Parallel.h>

#include <chrono>
#include <cmath>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

using namespace bb;

TEST_CASE("assign_nearest equals brute force", "[kmeans]") {
  torch::manual_seed(1);
  {
    // Well separated scores (d = 9, few centroids): no near ties, so exactly the reference.
    auto x = torch::randn({3000, 9});
    auto c = torch::randn({37, 9});
    auto ref = assign_nearest_ref(x, c);
    REQUIRE(assign_nearest(x, c).first.equal(ref));
    REQUIRE(assign_nearest_gemm(x, c, 1000).first.equal(ref));
  }
  // d = 9 and 16 take the small-d path by default, 17 and 40 the GEMM path; both paths are
  // checked on every shape (k not a multiple of the vector width, and k = 1).
  for (int64_t d : {1, 9, 16, 17, 40}) {
    for (int64_t k : {1, 8, 37, 1024}) {
      INFO("d " << d << " k " << k);
      auto x = torch::randn({3003, d});  // not a multiple of the 4-point block
      auto c = torch::randn({k, d});
      auto ref = assign_nearest_ref(x, c);
      auto x64 = x.to(torch::kFloat64), c64 = c.to(torch::kFloat64);
      auto sq = [&](const torch::Tensor& a) { return (x64 - c64.index_select(0, a)).pow(2).sum(1); };
      const auto best = sq(ref);
      // Both paths compare ||c||^2 - 2 x.c in float: where they pick another centroid than the
      // double-precision reference, it must be as near to float rounding of those scores.
      auto tol = 1e-5 * (x64.pow(2).sum(1) + c64.pow(2).sum(1).max());
      std::vector<torch::Tensor> picks = {assign_nearest(x, c).first, assign_nearest_gemm(x, c, 1000).first};
      if (d <= kSmallD) {
        picks.push_back(assign_nearest_small_d(x, c).first);
        // The blocked kernel adds up the same floats in the same order as the plain loop.
        auto [fa, fd] = assign_nearest_small_d(x, c);
        auto [ra, rd] = assign_nearest_small_d(x, c, /*reference=*/true);
        REQUIRE(fa.equal(ra));
        REQUIRE(fd.equal(rd));
      }
      else CHECK_THROWS_AS(assign_nearest_small_d(x, c), bb::Error);
      for (const torch::Tensor& a : picks) {
        REQUIRE(((sq(a) - best) <= tol).all().item<bool>());
        CHECK(a.ne(ref).sum().item<int64_t>() <= 30);  // near ties: 10 of 3,000 at d = 1, k = 1024
      }
      // The distance returned is the squared distance to the chosen centroid, to float rounding.
      auto [a, dist] = assign_nearest(x, c);
      REQUIRE(torch::allclose(dist.to(torch::kFloat64), sq(a), 1e-4, 1e-4));
    }
  }
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

TEST_CASE("at::parallel_for in bitbench's own code runs on more than one thread", "[kmeans][runtime]") {
  // at::parallel_for is compiled into the caller: built without OpenMP it silently runs serially
  // (the assignment steps of ecsq1d and the small-d nearest search were once 1-thread this way).
  const int before = at::get_num_threads();
  at::set_num_threads(2);
  std::mutex mu;
  std::set<std::thread::id> ids;
  at::parallel_for(0, 2, 1, [&](int64_t, int64_t) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    std::lock_guard<std::mutex> lock(mu);
    ids.insert(std::this_thread::get_id());
  });
  at::set_num_threads(before);
  CHECK(ids.size() == 2);
}

TEST_CASE("k-means++ seeds are weighted points, one per far-apart blob", "[kmeans]") {
  torch::manual_seed(4);
  // Three blobs 1,000 apart with unit spread, plus a zero-weight outlier: D^2 sampling picks a
  // second seed in an occupied blob with probability ~1e-6, and never the outlier.
  auto x = torch::cat({torch::randn({200, 2}), torch::randn({200, 2}) + 1000, torch::randn({200, 2}) - 1000,
                       torch::full({1, 2}, 5000.f)});
  auto w = torch::ones({601});
  w[600] = 0;
  ClusteringParams p;
  p.niter = 0;
  for (uint64_t seed : {1, 2, 3}) {
    p.seed = seed;
    auto r = kmeans(x, 3, p, w);
    std::set<int> blobs;
    for (int64_t j = 0; j < 3; ++j) {
      auto cj = r.centroids[j];
      REQUIRE((x.slice(0, 0, 600) - cj).abs().sum(1).min().item<float>() == 0.f);  // a weighted row of x
      blobs.insert((int)std::lround(cj[0].item<float>() / 1000.f));
    }
    CHECK(blobs.size() == 3);
  }
}
