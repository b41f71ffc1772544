#include "quant/gptq.h"
#include "coding/bytes.h"
#include "common/error.h"
#include "common/runtime.h"

#include <ATen/ops/mkldnn_linear_backward_weights.h>
#include <dlfcn.h>

#include <algorithm>
#include <cmath>
#include <numeric>

namespace bb {

GptqGrid gptq_minmax_grid(const torch::Tensor& W_in, int bits, bool fp16_scale) {
  BB_CHECK(bits >= 1 && bits <= 16, "gptq: bits must be in 1..16, got ", bits);
  auto W = W_in.to(torch::kFloat64).contiguous();
  const int64_t rows = W.size(0), D = W.numel() / std::max<int64_t>(1, rows);
  GptqGrid g;
  g.qmin = 0;
  g.qmax = (1 << bits) - 1;
  g.scale.resize(rows);
  g.zero.resize(rows);
  const double* p = W.data_ptr<double>();
  for (int64_t r = 0; r < rows; ++r) {
    double lo = 0, hi = 0;  // the range always includes 0
    for (int64_t j = 0; j < D; ++j) {
      lo = std::min(lo, p[r * D + j]);
      hi = std::max(hi, p[r * D + j]);
    }
    if (lo == 0 && hi == 0) {
      lo = -1;
      hi = 1;
    }
    double s = (hi - lo) / g.qmax;
    if (fp16_scale) s = half_to_float(float_to_half((float)s));
    BB_CHECK(s > 0 && std::isfinite(s), "gptq: row ", r, " has a scale that does not fit fp16 (range ", lo, " .. ", hi,
             ")");
    g.scale[r] = s;
    g.zero[r] = (int32_t)std::min<double>(g.qmax, std::max(0.0, std::nearbyint(-lo / s)));
  }
  return g;
}

GptqGrid gptq_step_grid(int64_t rows, double step, int32_t qmin, int32_t qmax) {
  BB_CHECK(step > 0 && std::isfinite(step), "gptq: step must be > 0, got ", step);
  BB_CHECK(qmin <= 0 && qmax >= 0, "gptq: the step grid must include 0");
  GptqGrid g;
  g.scale.assign(rows, step);
  g.zero.assign(rows, 0);
  g.qmin = qmin;
  g.qmax = qmax;
  return g;
}

std::vector<int64_t> gptq_column_order(const torch::Tensor& H, bool act_order) {
  const int64_t D = H.size(0);
  std::vector<int64_t> order(D);
  std::iota(order.begin(), order.end(), 0);
  if (!act_order) return order;
  auto d = H.diagonal().to(torch::kFloat64).contiguous();
  const double* dp = d.data_ptr<double>();
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return dp[a] > dp[b]; });
  return order;
}

namespace {

// The shared preparation of both loops: W (rows x D, float64, dead columns zeroed, columns in
// the factor's order).
struct Prepared {
  torch::Tensor W;
  const GptqFactor* f = nullptr;
  int64_t rows = 0, D = 0;
};

Prepared prepare(const torch::Tensor& W_in, const GptqFactor& f, const GptqGrid& grid) {
  Prepared p;
  p.f = &f;
  p.rows = W_in.size(0);
  p.D = W_in.numel() / std::max<int64_t>(1, p.rows);
  BB_CHECK((int64_t)f.order.size() == p.D, "gptq: the factor is for ", f.order.size(), " columns, W has ", p.D);
  BB_CHECK((int64_t)grid.scale.size() == p.rows && (int64_t)grid.zero.size() == p.rows, "gptq: grid has ",
           grid.scale.size(), " rows, W has ", p.rows);
  auto W = W_in.detach().to(torch::kFloat64).reshape({p.rows, p.D}).clone();
  W.index_put_({torch::indexing::Slice(), f.dead}, 0.0);
  p.W = W.index_select(1, torch::tensor(f.order, torch::kInt64)).contiguous();
  return p;
}

}  // namespace

namespace {

// The inverse of a lower-triangular float64 matrix: LAPACK dtrtri (D^3/3 flops) of the LAPACK
// libtorch loaded (looked up at run time: the build links no LAPACK of its own), else a
// triangular solve against I.
torch::Tensor lower_triangular_inverse(const torch::Tensor& L) {
  using Trtri = void (*)(const char*, const char*, const int*, double*, const int*, int*, size_t, size_t);
  static const Trtri trtri = reinterpret_cast<Trtri>(dlsym(RTLD_DEFAULT, "dtrtri_"));
  const int64_t n = L.size(0);
  if (trtri && n > 0 && n < (int64_t)1 << 30) {
    auto A = L.to(torch::kFloat64).contiguous().clone();
    const int ni = (int)n;
    int info = 0;
    // Read column-major, the row-major lower L is its transpose (upper); the inverse of the
    // transpose, read back row-major, is L^-1.
    trtri("U", "N", &ni, A.data_ptr<double>(), &ni, &info, 1, 1);
    BB_CHECK(info == 0, "gptq: dtrtri failed (info ", info, ")");
    return A;
  }
  return torch::linalg_solve_triangular(L, torch::eye(n, L.options()), /*upper=*/false);
}

}  // namespace

GptqFactor gptq_factor(const torch::Tensor& H_in, const GptqOptions& opt) {
  torch::NoGradGuard ng;
  BB_CHECK(H_in.dim() == 2 && H_in.size(0) == H_in.size(1), "gptq: H must be square, got ", H_in.sizes());
  BB_CHECK(opt.damp >= 0 && std::isfinite(opt.damp), "gptq: damp must be >= 0");
  GptqFactor f;
  auto H = H_in.detach().to(torch::kFloat64).clone();
  auto diag = H.diagonal();
  f.dead = diag.eq(0);
  diag.masked_fill_(f.dead, 1.0);
  f.order = gptq_column_order(H, opt.act_order);
  auto perm = torch::tensor(f.order, torch::kInt64);
  H = H.index_select(0, perm).index_select(1, perm);
  const double damp = opt.damp * H.diagonal().mean().item<double>();
  H.diagonal().add_(damp);
  // U with one Cholesky factorisation and one triangular inverse (2/3 D^3 flops instead of the
  // 4/3 D^3 of Cholesky, cholesky_inverse, Cholesky): with J the reversal permutation and
  // J H J = L L^T (L lower), H = R R^T for the upper R = J L J, so H^-1 = R^-T R^-1 and
  // U = R^-1 = J L^-1 J (upper, positive diagonal: the unique upper Cholesky factor of H^-1).
  auto chol = torch::linalg_cholesky_ex(H.flip({0, 1}));
  BB_CHECK(std::get<1>(chol).item<int64_t>() == 0, "gptq: H + damp*I is not positive definite (damp ", opt.damp,
           "); raise damp");
  f.U = lower_triangular_inverse(std::get<0>(chol)).flip({0, 1}).contiguous();
  return f;
}

namespace {

GptqResult unpermute(const Prepared& p, const torch::Tensor& codes_p, const torch::Tensor& Q_p) {
  auto inv = torch::empty({p.D}, torch::kInt64);
  for (int64_t k = 0; k < p.D; ++k) inv[p.f->order[k]] = k;
  GptqResult r;
  r.codes = codes_p.index_select(1, inv).contiguous();
  r.Q = Q_p.index_select(1, inv).contiguous();
  return r;
}

}  // namespace

GptqResult gptq_quantize(const torch::Tensor& W_in, const GptqFactor& f, const GptqGrid& grid,
                         const GptqOptions& opt) {
  torch::NoGradGuard ng;
  BB_CHECK(opt.block_size >= 1, "gptq: block_size must be >= 1");
  Prepared p = prepare(W_in, f, grid);
  const int64_t rows = p.rows, D = p.D, B = opt.block_size;
  auto codes = torch::empty({rows, D}, torch::kInt32);
  auto Q = torch::empty({rows, D}, torch::kFloat64);
  double* W = p.W.data_ptr<double>();
  const double* U = f.U.data_ptr<double>();
  int32_t* cp = codes.data_ptr<int32_t>();
  double* qp = Q.data_ptr<double>();
  for (int64_t i1 = 0; i1 < D; i1 += B) {
    const int64_t i2 = std::min(D, i1 + B), nb = i2 - i1;
    auto Err = torch::empty({rows, nb}, torch::kFloat64);
    double* ep = Err.data_ptr<double>();
    // Rows are independent: each row's block is quantized column by column, the error of column i
    // propagated to the block's later columns at once.
    at::parallel_for(0, rows, 16, [&](int64_t rb, int64_t re) {
      for (int64_t r = rb; r < re; ++r) {
        double* w = W + r * D;
        for (int64_t i = i1; i < i2; ++i) {
          const int32_t q = grid.code(r, w[i]);
          const double v = grid.value(r, q);
          const double err = (w[i] - v) / U[i * D + i];
          cp[r * D + i] = q;
          qp[r * D + i] = v;
          const double* u = U + i * D;
          for (int64_t j = i + 1; j < i2; ++j) w[j] -= err * u[j];
          ep[r * nb + (i - i1)] = err;
        }
      }
    });
    // Lazy update of the columns after the block: one GEMM per block.
    if (i2 < D) p.W.slice(1, i2, D).sub_(torch::mm(Err, f.U.slice(0, i1, i2).slice(1, i2, D)));
  }
  return unpermute(p, codes, Q);
}

GptqResult gptq_quantize_ref(const torch::Tensor& W_in, const GptqFactor& f, const GptqGrid& grid) {
  torch::NoGradGuard ng;
  Prepared p = prepare(W_in, f, grid);
  const int64_t rows = p.rows, D = p.D;
  auto codes = torch::empty({rows, D}, torch::kInt32);
  auto Q = torch::empty({rows, D}, torch::kFloat64);
  double* W = p.W.data_ptr<double>();
  const double* U = f.U.data_ptr<double>();
  int32_t* cp = codes.data_ptr<int32_t>();
  double* qp = Q.data_ptr<double>();
  for (int64_t i = 0; i < D; ++i)
    for (int64_t r = 0; r < rows; ++r) {
      double* w = W + r * D;
      const int32_t q = grid.code(r, w[i]);
      const double v = grid.value(r, q);
      const double err = (w[i] - v) / U[i * D + i];
      cp[r * D + i] = q;
      qp[r * D + i] = v;
      for (int64_t j = i + 1; j < D; ++j) w[j] -= err * U[i * D + j];
    }
  return unpermute(p, codes, Q);
}

double gptq_output_error(const torch::Tensor& dW_in, const torch::Tensor& H, const torch::Tensor& row_scale) {
  torch::NoGradGuard ng;
  auto dW = dW_in.to(torch::kFloat64).reshape({dW_in.size(0), -1});
  auto per_row = (torch::mm(dW, H.to(torch::kFloat64)) * dW).sum(1);
  if (row_scale.defined()) per_row = per_row * row_scale.to(torch::kFloat64).pow(2);
  return per_row.sum().item<double>();
}

torch::Tensor gptq_gram_f32(const torch::Tensor& P_in, int64_t block) {
  torch::NoGradGuard ng;
  BB_CHECK(P_in.dim() == 2 && P_in.scalar_type() == torch::kFloat32, "gptq_gram_f32: expects an n x D float32 matrix, got ",
           P_in.sizes(), " ", P_in.scalar_type());
  const int64_t n = P_in.size(0), D = P_in.size(1);
  if (!at::hasMKLDNN() || n == 0 || D == 0) return gram_upper(P_in);
  // oneDNN's inner-product weight gradient dY^T X (its JIT GEMM picks its kernels from the CPU's
  // features, where OpenBLAS may fall back to generic SSE3 kernels on a CPU it does not know),
  // on column blocks of ~`block`: the blocks on and above the diagonal only, (nb + 1) / (2 nb) of
  // the full product's flops. The result must not depend on the thread count (oneDNN splits its
  // sums by the threads it has): the rows are cut into fixed slabs, every (block pair, slab)
  // product is one single-threaded task (run_single_threaded_tasks), and the
  // slabs' products are summed in slab order. The upper triangle is mirrored, so G is symmetric
  // bit for bit.
  BB_CHECK(block >= 1, "gptq_gram_f32: block must be >= 1");
  const int64_t nb = std::max<int64_t>(1, D / block), slab = 8192, ns = (n + slab - 1) / slab;
  std::vector<int64_t> edge(nb + 1);
  for (int64_t a = 0; a <= nb; ++a) edge[a] = a * D / nb;
  std::vector<std::pair<int64_t, int64_t>> pairs;
  for (int64_t a = 0; a < nb; ++a)
    for (int64_t b = a; b < nb; ++b) pairs.emplace_back(a, b);
  const int64_t np = (int64_t)pairs.size();
  std::vector<torch::Tensor> op(ns * nb);    // slab s, block a at s * nb + a (mkldnn layout)
  std::vector<torch::Tensor> part(np * ns);  // pair p, slab s at p * ns + s
  run_single_threaded_tasks(ns * nb, [&](int64_t t, int) {
    const int64_t s = t / nb, a = t % nb;
    op[t] = P_in.slice(0, s * slab, std::min(n, (s + 1) * slab)).slice(1, edge[a], edge[a + 1]).contiguous().to_mkldnn();
  });
  run_single_threaded_tasks(np * ns, [&](int64_t t, int) {
    const auto [a, b] = pairs[t / ns];
    const int64_t s = t % ns;
    part[t] = std::get<0>(at::mkldnn_linear_backward_weights(op[s * nb + a], op[s * nb + b], P_in, /*bias_defined=*/false));
  });
  auto G = torch::empty({D, D}, torch::kFloat32);
  for (int64_t p = 0; p < np; ++p) {
    auto acc = part[p * ns];
    for (int64_t s = 1; s < ns; ++s) acc = acc + part[p * ns + s];
    G.slice(0, edge[pairs[p].first], edge[pairs[p].first + 1]).slice(1, edge[pairs[p].second], edge[pairs[p].second + 1]).copy_(acc);
  }
  auto upper = G.triu();
  return upper + upper.triu(1).t();
}

void GptqGram::add(const torch::Tensor& x_in) { add_impl(x_in, torch::Tensor()); }

void GptqGram::add(const torch::Tensor& x_in, const torch::Tensor& x_ref) {
  BB_CHECK(x_ref.defined() && x_ref.sizes() == x_in.sizes(), "gptq: reference input must have the input's shape ",
           x_in.sizes(), ", got ", x_ref.defined() ? x_ref.sizes() : torch::IntArrayRef{});
  BB_CHECK(weight.defined() && weight.dim() == 2 && weight.size(1) == geom.row_size(),
           "gptq: add(x, x_ref) needs the layer's weight (rows x ", geom.row_size(), ")");
  add_impl(x_in, x_ref);
}

void GptqGram::add_impl(const torch::Tensor& x_in, const torch::Tensor& x_ref_in) {
  torch::NoGradGuard ng;
  auto x = x_in.to(torch::kFloat32);
  auto xr = x_ref_in.defined() ? x_ref_in.to(torch::kFloat32) : torch::Tensor();
  const torch::Tensor w32 = xr.defined() ? weight.to(torch::kFloat32).contiguous() : torch::Tensor();
  const int64_t D = geom.row_size();
  // Images per chunk: the im2col rows of a chunk stay under ~64 MB.
  int64_t per_image = 1;
  if (geom.conv) {
    BB_CHECK(x.dim() == 4 && x.size(1) == geom.in_channels, "gptq: conv input must be N x ", geom.in_channels,
             " x H x W, got ", x.sizes());
    per_image = geom.out_h(x.size(2)) * geom.out_w(x.size(3));
  } else {
    BB_CHECK(x.size(-1) == D, "gptq: linear input must end in ", D, ", got ", x.sizes());
    x = x.reshape({-1, D});
    if (xr.defined()) xr = xr.reshape({-1, D});
  }
  auto rows_of = [&](const torch::Tensor& xs) {
    if (!geom.conv) return xs.contiguous();
    namespace F = torch::nn::functional;
    auto cols = F::unfold(xs, F::UnfoldFuncOptions({geom.kh, geom.kw})
                                  .dilation({geom.dh, geom.dw})
                                  .padding({geom.ph, geom.pw})
                                  .stride({geom.sh, geom.sw}));  // n x D x positions
    return cols.transpose(1, 2).reshape({-1, D}).contiguous();
  };
  const int64_t chunk = std::max<int64_t>(1, (int64_t)(16 << 20) / std::max<int64_t>(1, per_image * D));
  for (int64_t s = 0; s < x.size(0); s += chunk) {
    const int64_t e = std::min(x.size(0), s + chunk);
    torch::Tensor P = rows_of(x.slice(0, s, e));
    const int64_t n = P.size(0);
    auto g = gptq_gram_f32(P).to(torch::kFloat64);
    H = H.defined() ? H.add_(g) : g;
    if (xr.defined()) {
      // B += P^T Y, Y = (P_ref - P) W^T: for a conv, the conv of the input difference (oneDNN,
      // cheaper than its im2col rows times W^T), its outputs in P's row order (image, oy, ox).
      // float32 per chunk (no product splits its sums across threads: the same bytes with any
      // thread count), accumulated in float64 like H.
      const auto d = xr.slice(0, s, e) - x.slice(0, s, e);
      torch::Tensor Y;
      if (geom.conv) {
        namespace F = torch::nn::functional;
        Y = F::conv2d(d, w32.view({w32.size(0), geom.in_channels, geom.kh, geom.kw}),
                      F::Conv2dFuncOptions().stride({geom.sh, geom.sw}).padding({geom.ph, geom.pw}).dilation({geom.dh, geom.dw}))
                .permute({0, 2, 3, 1})
                .reshape({-1, w32.size(0)});
      } else {
        Y = torch::mm(d, w32.t());
      }
      auto b = torch::mm(P.t(), Y.contiguous()).to(torch::kFloat64);
      B = B.defined() ? B.add_(b) : b;
    }
    rows += n;
  }
}

torch::Tensor gptq_fp_target(const torch::Tensor& W, const torch::Tensor& H, const torch::Tensor& B, double damp) {
  torch::NoGradGuard ng;
  BB_CHECK(H.defined() && B.defined() && H.dim() == 2 && H.size(0) == W.size(1) && H.size(1) == W.size(1) &&
               B.dim() == 2 && B.size(0) == W.size(1) && B.size(1) == W.size(0),
           "gptq_fp_target: H must be D x D and B D x rows for W rows x D");
  auto Hd = H.clone();
  const double lambda = std::max(damp * Hd.diagonal().mean().item<double>(), 1e-12);
  Hd.diagonal().add_(lambda);
  auto L = torch::linalg::cholesky(Hd);
  return W.to(torch::kFloat64) + torch::cholesky_solve(B.to(torch::kFloat64), L, /*upper=*/false).t();
}

}  // namespace bb
