// Differentiable float ops on Vars: products, elementwise activations, normalisations, shape
// changes, im2col for convolutions, and losses. Every op checks its shapes and names itself in
// errors. Matrix products use Eigen on row-major maps (the digits models train in seconds on two
// cores); the quantized products live in providers/ and multiply in integers via the backend.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include <Eigen/Core>

#include "qforge/nn/autograd.hpp"

namespace qforge::nn {

namespace detail {
using RowMajor = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using MapC = Eigen::Map<const RowMajor>;
using Map = Eigen::Map<RowMajor>;

// c[M, N] (+)= a[M, K] · b[N, K]^T
inline void gemm_nt(const float* a, const float* b, float* c, std::int64_t M, std::int64_t N, std::int64_t K,
                    bool accumulate = false) {
  Map C(c, M, N);
  if (accumulate)
    C.noalias() += MapC(a, M, K) * MapC(b, N, K).transpose();
  else
    C.noalias() = MapC(a, M, K) * MapC(b, N, K).transpose();
}
// c[M, K] (+)= a[M, N] · b[N, K]
inline void gemm_nn(const float* a, const float* b, float* c, std::int64_t M, std::int64_t N, std::int64_t K,
                    bool accumulate = false) {
  Map C(c, M, K);
  if (accumulate)
    C.noalias() += MapC(a, M, N) * MapC(b, N, K);
  else
    C.noalias() = MapC(a, M, N) * MapC(b, N, K);
}
// c[N, K] (+)= a[M, N]^T · b[M, K]
inline void gemm_tn(const float* a, const float* b, float* c, std::int64_t M, std::int64_t N, std::int64_t K,
                    bool accumulate = false) {
  Map C(c, N, K);
  if (accumulate)
    C.noalias() += MapC(a, M, N).transpose() * MapC(b, M, K);
  else
    C.noalias() = MapC(a, M, N).transpose() * MapC(b, M, K);
}

inline void require_rank(const Var& v, int rank, std::string_view op) {
  if (v.rank() != rank)
    throw_error(Status::kShapeMismatch, "{}: expected a rank-{} input, got shape {}", op, rank, shape_str(v.shape()));
}

template <class F, class D>
Var unary(const Var& x, F f, D df) {
  TensorF y(x.shape());
  const float* xv = x.value().data();
  for (std::int64_t i = 0; i < y.size(); ++i) y[i] = f(xv[i]);
  return make_result(std::move(y), {x}, [df](Node& self) {
    Node& in = *self.inputs[0];
    TensorF g(in.value.shape());
    for (std::int64_t i = 0; i < g.size(); ++i) g[i] = self.grad[i] * df(in.value[i], self.value[i]);
    in.accumulate(g);
  });
}
}  // namespace detail

// ---- products --------------------------------------------------------------------------------
// a[M, K] · b[N, K]^T -> [M, N]: the float dot_general of a Linear layer (b is the weight).
inline Var matmul_nt(const Var& a, const Var& b) {
  detail::require_rank(a, 2, "matmul_nt lhs");
  detail::require_rank(b, 2, "matmul_nt rhs");
  const std::int64_t M = a.dim(0), K = a.dim(1), N = b.dim(0);
  if (b.dim(1) != K)
    throw_error(Status::kShapeMismatch, "matmul_nt: lhs {} and rhs {} disagree on the contracting size",
                shape_str(a.shape()), shape_str(b.shape()));
  TensorF y({M, N});
  detail::gemm_nt(a.value().data(), b.value().data(), y.data(), M, N, K);
  return make_result(std::move(y), {a, b}, [M, N, K](Node& self) {
    Node& A = *self.inputs[0];
    Node& B = *self.inputs[1];
    if (A.requires_grad) {
      TensorF g({M, K});
      detail::gemm_nn(self.grad.data(), B.value.data(), g.data(), M, N, K);
      A.accumulate(g);
    }
    if (B.requires_grad) {
      TensorF g({N, K});
      detail::gemm_tn(self.grad.data(), A.value.data(), g.data(), M, N, K);
      B.accumulate(g);
    }
  });
}

// a[G, M, K] · b[G, N, K]^T -> [G, M, N]: batched product between activations (attention scores).
inline Var batched_matmul_nt(const Var& a, const Var& b) {
  detail::require_rank(a, 3, "batched_matmul_nt lhs");
  detail::require_rank(b, 3, "batched_matmul_nt rhs");
  const std::int64_t G = a.dim(0), M = a.dim(1), K = a.dim(2), N = b.dim(1);
  if (b.dim(0) != G || b.dim(2) != K)
    throw_error(Status::kShapeMismatch, "batched_matmul_nt: lhs {} and rhs {} do not fit", shape_str(a.shape()),
                shape_str(b.shape()));
  TensorF y({G, M, N});
  for (std::int64_t g = 0; g < G; ++g)
    detail::gemm_nt(a.value().data() + g * M * K, b.value().data() + g * N * K, y.data() + g * M * N, M, N, K);
  return make_result(std::move(y), {a, b}, [G, M, N, K](Node& self) {
    Node& A = *self.inputs[0];
    Node& B = *self.inputs[1];
    TensorF ga({G, M, K}), gb({G, N, K});
    for (std::int64_t g = 0; g < G; ++g) {
      const float* dy = self.grad.data() + g * M * N;
      if (A.requires_grad) detail::gemm_nn(dy, B.value.data() + g * N * K, ga.data() + g * M * K, M, N, K);
      if (B.requires_grad) detail::gemm_tn(dy, A.value.data() + g * M * K, gb.data() + g * N * K, M, N, K);
    }
    if (A.requires_grad) A.accumulate(ga);
    if (B.requires_grad) B.accumulate(gb);
  });
}

// x[G, A, B] -> [G, B, A].
inline Var transpose_last2(const Var& x) {
  detail::require_rank(x, 3, "transpose_last2");
  const std::int64_t G = x.dim(0), A = x.dim(1), B = x.dim(2);
  auto tr = [](const float* src, float* dst, std::int64_t g_, std::int64_t a_, std::int64_t b_) {
    for (std::int64_t g = 0; g < g_; ++g)
      for (std::int64_t i = 0; i < a_; ++i)
        for (std::int64_t j = 0; j < b_; ++j) dst[(g * b_ + j) * a_ + i] = src[(g * a_ + i) * b_ + j];
  };
  TensorF y({G, B, A});
  tr(x.value().data(), y.data(), G, A, B);
  return make_result(std::move(y), {x}, [G, A, B, tr](Node& self) {
    TensorF g({G, A, B});
    tr(self.grad.data(), g.data(), G, B, A);
    self.inputs[0]->accumulate(g);
  });
}

// ---- elementwise -----------------------------------------------------------------------------
inline Var add(const Var& a, const Var& b) {
  if (a.shape() != b.shape())
    throw_error(Status::kShapeMismatch, "add: shapes {} and {} differ", shape_str(a.shape()), shape_str(b.shape()));
  TensorF y(a.shape());
  for (std::int64_t i = 0; i < y.size(); ++i) y[i] = a.value()[i] + b.value()[i];
  return make_result(std::move(y), {a, b}, [](Node& self) {
    for (auto& in : self.inputs)
      if (in->requires_grad) in->accumulate(self.grad);
  });
}

inline Var scale(const Var& x, float s) {
  return detail::unary(x, [s](float v) { return v * s; }, [s](float, float) { return s; });
}

// y[..., N] + bias[N], broadcast over the leading axes; with `channel_axis` = 1 for NCHW maps.
inline Var add_bias(const Var& y, const Var& bias, int channel_axis = -1) {
  const int axis = normalize_axis(channel_axis, y.shape().size(), "add_bias");
  const std::int64_t C = y.dim(axis);
  if (bias.value().size() != C)
    throw_error(Status::kShapeMismatch, "add_bias: bias of shape {} does not fit axis {} of {}", shape_str(bias.shape()),
                axis, shape_str(y.shape()));
  std::int64_t inner = 1;
  for (std::size_t a = static_cast<std::size_t>(axis) + 1; a < y.shape().size(); ++a) inner *= y.shape()[a];
  TensorF out = y.value();
  for (std::int64_t i = 0; i < out.size(); ++i) out[i] += bias.value()[(i / inner) % C];
  return make_result(std::move(out), {y, bias}, [C, inner](Node& self) {
    Node& Y = *self.inputs[0];
    Node& B = *self.inputs[1];
    if (Y.requires_grad) Y.accumulate(self.grad);
    if (B.requires_grad) {
      TensorF g(B.value.shape());
      for (std::int64_t i = 0; i < self.grad.size(); ++i) g[(i / inner) % C] += self.grad[i];
      B.accumulate(g);
    }
  });
}

inline Var relu(const Var& x) {
  return detail::unary(x, [](float v) { return v > 0 ? v : 0.0f; }, [](float v, float) { return v > 0 ? 1.0f : 0.0f; });
}

// Exact GELU, x·Φ(x).
inline Var gelu(const Var& x) {
  constexpr float kInvSqrt2 = 0.70710678118654752f;
  constexpr float kInvSqrt2Pi = 0.39894228040143268f;
  return detail::unary(
      x, [=](float v) { return 0.5f * v * (1.0f + std::erf(v * kInvSqrt2)); },
      [=](float v, float) { return 0.5f * (1.0f + std::erf(v * kInvSqrt2)) + v * kInvSqrt2Pi * std::exp(-0.5f * v * v); });
}

inline Var silu(const Var& x) {
  return detail::unary(
      x, [](float v) { return v / (1.0f + std::exp(-v)); },
      [](float v, float) {
        const float s = 1.0f / (1.0f + std::exp(-v));
        return s * (1.0f + v * (1.0f - s));
      });
}

// Softmax over the last axis (max-subtracted).
inline Var softmax(const Var& x) {
  const std::int64_t C = x.shape().empty() ? 1 : x.shape().back();
  const std::int64_t rows = C ? x.value().size() / C : 0;
  TensorF y(x.shape());
  for (std::int64_t r = 0; r < rows; ++r) {
    const float* in = x.value().data() + r * C;
    float* out = y.data() + r * C;
    const float mx = *std::max_element(in, in + C);
    double sum = 0;
    for (std::int64_t c = 0; c < C; ++c) sum += out[c] = std::exp(in[c] - mx);
    for (std::int64_t c = 0; c < C; ++c) out[c] = static_cast<float>(out[c] / sum);
  }
  return make_result(std::move(y), {x}, [C, rows](Node& self) {
    TensorF g(self.value.shape());
    for (std::int64_t r = 0; r < rows; ++r) {
      const float* p = self.value.data() + r * C;
      const float* dy = self.grad.data() + r * C;
      double dot = 0;
      for (std::int64_t c = 0; c < C; ++c) dot += double(p[c]) * dy[c];
      for (std::int64_t c = 0; c < C; ++c) g[r * C + c] = static_cast<float>(p[c] * (dy[c] - dot));
    }
    self.inputs[0]->accumulate(g);
  });
}

// LayerNorm (with `centre`) or RMSNorm (without) over the last axis, times gamma (+ beta).
inline Var normalize_last_axis(const Var& x, const Var& gamma, const Var* beta, float eps, bool centre) {
  const std::int64_t D = x.shape().back();
  if (gamma.value().size() != D)
    throw_error(Status::kShapeMismatch, "norm: gamma of shape {} does not fit input {}", shape_str(gamma.shape()),
                shape_str(x.shape()));
  const std::int64_t rows = x.value().size() / D;
  TensorF y(x.shape()), xhat(x.shape()), inv_std({rows});
  for (std::int64_t r = 0; r < rows; ++r) {
    const float* in = x.value().data() + r * D;
    double mean = 0, var = 0;
    if (centre) {
      for (std::int64_t d = 0; d < D; ++d) mean += in[d];
      mean /= static_cast<double>(D);
    }
    for (std::int64_t d = 0; d < D; ++d) var += (in[d] - mean) * (in[d] - mean);
    var /= static_cast<double>(D);
    const auto is = static_cast<float>(1.0 / std::sqrt(var + eps));
    inv_std[r] = is;
    for (std::int64_t d = 0; d < D; ++d) {
      const float h = static_cast<float>(in[d] - mean) * is;
      xhat[r * D + d] = h;
      y[r * D + d] = h * gamma.value()[d] + (beta ? beta->value()[d] : 0.0f);
    }
  }
  std::vector<Var> inputs{x, gamma};
  if (beta) inputs.push_back(*beta);
  return make_result(std::move(y), std::move(inputs), [D, rows, centre, xhat = std::move(xhat), inv_std = std::move(inv_std)](Node& self) {
    Node& X = *self.inputs[0];
    Node& Gm = *self.inputs[1];
    TensorF gx(X.value.shape()), gg({D}), gb({D});
    for (std::int64_t r = 0; r < rows; ++r) {
      const float* dy = self.grad.data() + r * D;
      const float* h = xhat.data() + r * D;
      double sum_dh = 0, sum_dh_h = 0;
      for (std::int64_t d = 0; d < D; ++d) {
        const double dh = double(dy[d]) * Gm.value[d];
        sum_dh += dh;
        sum_dh_h += dh * h[d];
        gg[d] += dy[d] * h[d];
        gb[d] += dy[d];
      }
      const double inv_d = 1.0 / static_cast<double>(D);
      for (std::int64_t d = 0; d < D; ++d) {
        const double dh = double(dy[d]) * Gm.value[d];
        const double mean_term = centre ? sum_dh * inv_d : 0.0;
        gx[r * D + d] = static_cast<float>(inv_std[r] * (dh - mean_term - h[d] * sum_dh_h * inv_d));
      }
    }
    if (X.requires_grad) X.accumulate(gx);
    if (Gm.requires_grad) Gm.accumulate(gg);
    if (self.inputs.size() > 2 && self.inputs[2]->requires_grad) self.inputs[2]->accumulate(gb);
  });
}

// ---- shapes ----------------------------------------------------------------------------------
inline Var reshape(const Var& x, Shape shape) {
  if (numel(shape) != x.value().size())
    throw_error(Status::kShapeMismatch, "reshape: {} elements cannot take shape {}", x.value().size(), shape_str(shape));
  Shape original = x.shape();
  return make_result(x.value().reshaped(std::move(shape)), {x}, [original](Node& self) {
    self.inputs[0]->accumulate(self.grad.reshaped(original));
  });
}

// Rows of `table` [V, D] picked by integer ids stored as floats in `ids` (any shape) -> [..., D].
inline Var embedding_lookup(const Var& ids, const Var& table) {
  detail::require_rank(table, 2, "embedding table");
  const std::int64_t V = table.dim(0), D = table.dim(1), n = ids.value().size();
  std::vector<std::int64_t> rows(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) {
    const float f = ids.value()[i];
    const auto id = static_cast<std::int64_t>(f);
    if (static_cast<float>(id) != f || id < 0 || id >= V)
      throw_error(Status::kInvalidArgument, "embedding: id {} at position {} is not an integer in [0, {})", f, i, V);
    rows[static_cast<std::size_t>(i)] = id;
  }
  Shape shape = ids.shape();
  shape.push_back(D);
  TensorF y(shape);
  for (std::int64_t i = 0; i < n; ++i)
    std::copy_n(table.value().data() + rows[static_cast<std::size_t>(i)] * D, D, y.data() + i * D);
  return make_result(std::move(y), {table}, [rows, D](Node& self) {
    Node& T = *self.inputs[0];
    TensorF g(T.value.shape());
    for (std::size_t i = 0; i < rows.size(); ++i)
      for (std::int64_t d = 0; d < D; ++d) g[rows[i] * D + d] += self.grad[static_cast<std::int64_t>(i) * D + d];
    T.accumulate(g);
  });
}

// ---- convolution via im2col --------------------------------------------------------------------
struct Conv2dGeometry {
  std::int64_t batch, channels, height, width, kernel_h, kernel_w, stride, padding, out_h, out_w;
  std::int64_t patch_size() const { return channels * kernel_h * kernel_w; }
  std::int64_t rows() const { return batch * out_h * out_w; }
};

// x[B, C, H, W] -> patches[B·OH·OW, C·KH·KW], one row per output pixel (image-major), columns in
// the weight's [C, KH, KW] order so that a weight [O, C, KH, KW] reshaped to [O, C·KH·KW] is the
// right-hand side of the product.
inline Var im2col(const Var& x, const Conv2dGeometry& g) {
  TensorF p({g.rows(), g.patch_size()});
  auto index = [g](std::int64_t row, std::int64_t col, std::int64_t& src) {
    const std::int64_t b = row / (g.out_h * g.out_w), oy = (row / g.out_w) % g.out_h, ox = row % g.out_w;
    const std::int64_t c = col / (g.kernel_h * g.kernel_w), ky = (col / g.kernel_w) % g.kernel_h, kx = col % g.kernel_w;
    const std::int64_t iy = oy * g.stride - g.padding + ky, ix = ox * g.stride - g.padding + kx;
    if (iy < 0 || iy >= g.height || ix < 0 || ix >= g.width) return false;
    src = ((b * g.channels + c) * g.height + iy) * g.width + ix;
    return true;
  };
  const float* xv = x.value().data();
  for (std::int64_t r = 0; r < g.rows(); ++r)
    for (std::int64_t c = 0; c < g.patch_size(); ++c) {
      std::int64_t src = 0;
      p[r * g.patch_size() + c] = index(r, c, src) ? xv[src] : 0.0f;
    }
  return make_result(std::move(p), {x}, [g, index](Node& self) {
    Node& X = *self.inputs[0];
    TensorF gx(X.value.shape());
    for (std::int64_t r = 0; r < g.rows(); ++r)
      for (std::int64_t c = 0; c < g.patch_size(); ++c) {
        std::int64_t src = 0;
        if (index(r, c, src)) gx[src] += self.grad[r * g.patch_size() + c];
      }
    X.accumulate(gx);
  });
}

// y[B·OH·OW, O] (rows image-major) -> [B, O, OH, OW].
inline Var rows_to_nchw(const Var& y, std::int64_t batch, std::int64_t out_h, std::int64_t out_w) {
  const std::int64_t O = y.dim(1), hw = out_h * out_w;
  TensorF out({batch, O, out_h, out_w});
  for (std::int64_t b = 0; b < batch; ++b)
    for (std::int64_t p = 0; p < hw; ++p)
      for (std::int64_t o = 0; o < O; ++o) out[(b * O + o) * hw + p] = y.value()[(b * hw + p) * O + o];
  return make_result(std::move(out), {y}, [batch, O, hw](Node& self) {
    TensorF g(self.inputs[0]->value.shape());
    for (std::int64_t b = 0; b < batch; ++b)
      for (std::int64_t p = 0; p < hw; ++p)
        for (std::int64_t o = 0; o < O; ++o) g[(b * hw + p) * O + o] = self.grad[(b * O + o) * hw + p];
    self.inputs[0]->accumulate(g);
  });
}

// ---- losses ----------------------------------------------------------------------------------
// Mean squared error over all elements -> shape [1].
inline Var mse_loss(const Var& pred, const TensorF& target) {
  if (pred.shape() != target.shape())
    throw_error(Status::kShapeMismatch, "mse_loss: prediction {} and target {} differ", shape_str(pred.shape()),
                shape_str(target.shape()));
  const std::int64_t n = target.size();
  double sum = 0;
  for (std::int64_t i = 0; i < n; ++i) sum += double(pred.value()[i] - target[i]) * (pred.value()[i] - target[i]);
  TensorF loss({1}, static_cast<float>(sum / static_cast<double>(n)));
  return make_result(std::move(loss), {pred}, [target, n](Node& self) {
    Node& P = *self.inputs[0];
    TensorF g(P.value.shape());
    const float k = 2.0f * self.grad[0] / static_cast<float>(n);
    for (std::int64_t i = 0; i < n; ++i) g[i] = k * (P.value[i] - target[i]);
    P.accumulate(g);
  });
}

// Mean softmax cross-entropy of logits [B, C] against integer labels -> shape [1].
inline Var softmax_cross_entropy(const Var& logits, std::span<const int> labels) {
  detail::require_rank(logits, 2, "softmax_cross_entropy");
  const std::int64_t B = logits.dim(0), C = logits.dim(1);
  if (static_cast<std::int64_t>(labels.size()) != B)
    throw_error(Status::kShapeMismatch, "softmax_cross_entropy: {} labels for {} rows of logits", labels.size(), B);
  TensorF probs({B, C});
  double loss = 0;
  for (std::int64_t b = 0; b < B; ++b) {
    const int y = labels[static_cast<std::size_t>(b)];
    if (y < 0 || y >= C) throw_error(Status::kInvalidArgument, "softmax_cross_entropy: label {} of row {} is not in [0, {})", y, b, C);
    const float* z = logits.value().data() + b * C;
    const float mx = *std::max_element(z, z + C);
    double sum = 0;
    for (std::int64_t c = 0; c < C; ++c) sum += std::exp(double(z[c]) - mx);
    const double lse = mx + std::log(sum);
    loss += lse - z[y];
    for (std::int64_t c = 0; c < C; ++c) probs[b * C + c] = static_cast<float>(std::exp(z[c] - lse));
  }
  std::vector<int> ys(labels.begin(), labels.end());
  TensorF out({1}, static_cast<float>(loss / static_cast<double>(B)));
  return make_result(std::move(out), {logits}, [probs = std::move(probs), ys, B, C](Node& self) {
    TensorF g = probs;
    const float k = self.grad[0] / static_cast<float>(B);
    for (std::int64_t b = 0; b < B; ++b) {
      g[b * C + ys[static_cast<std::size_t>(b)]] -= 1.0f;
      for (std::int64_t c = 0; c < C; ++c) g[b * C + c] *= k;
    }
    self.inputs[0]->accumulate(g);
  });
}

}  // namespace qforge::nn
