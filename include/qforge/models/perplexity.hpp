// Perplexity with llama-perplexity's method, so numbers compare with llama.cpp's: the token
// stream is split into windows of n_ctx tokens (a trailing partial window is dropped), each window
// runs from an empty cache with its first token replaced by BOS when the model adds one, and only
// the second half of each window is scored (positions n_ctx/2 .. n_ctx-2 predict the next token).
// The estimate is exp(mean NLL) with the standard error of the mean NLL carried through exp:
//   ± = ppl * sqrt((mean(NLL²) - mean(NLL)²) / (count - 1)).
#pragma once

#include <cmath>
#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <vector>

#include "qforge/models/llama.hpp"

namespace qforge::models {

struct PerplexityOptions {
  std::int64_t n_ctx = 512;
  std::int64_t max_chunks = -1;            // -1: every full window
  std::optional<std::int32_t> bos;         // replaces each window's first token when set
  KvPrecision kv = KvPrecision::kF16;      // llama.cpp's default cache
};

struct PerplexityEstimate {
  double ppl = 0, ppl_stderr = 0;
  std::int64_t tokens_scored = 0, chunks = 0;
};

struct PerplexityResult {
  PerplexityEstimate final;
  std::vector<double> running_ppl;  // after each chunk, as llama-perplexity prints them
  std::vector<double> token_logprob;  // log p(next token) of every scored position, in order
};

namespace detail {
inline PerplexityEstimate perplexity_estimate(double nll_sum, double nll2_sum, std::int64_t count, std::int64_t chunks) {
  PerplexityEstimate e;
  e.tokens_scored = count;
  e.chunks = chunks;
  if (count == 0) return e;
  const double mean = nll_sum / static_cast<double>(count), mean2 = nll2_sum / static_cast<double>(count);
  e.ppl = std::exp(mean);
  const double var = mean2 - mean * mean;
  e.ppl_stderr = var > 0 && count > 1 ? e.ppl * std::sqrt(var / static_cast<double>(count - 1)) : 0.0;
  return e;
}

// log softmax(logits)[target] in double.
inline double log_prob(const float* logits, std::int64_t n, std::int32_t target) {
  double mx = logits[0];
  for (std::int64_t i = 1; i < n; ++i) mx = std::max(mx, double{logits[i]});
  double sum = 0;
  for (std::int64_t i = 0; i < n; ++i) sum += std::exp(double{logits[i]} - mx);
  return double{logits[target]} - mx - std::log(sum);
}
}  // namespace detail

// `on_chunk(done, total, running)` is called after each window (progress reporting).
inline PerplexityResult perplexity(const LlamaModel& model, std::span<const std::int32_t> tokens,
                                   const PerplexityOptions& o = {},
                                   const std::function<void(std::int64_t, std::int64_t, const PerplexityEstimate&)>&
                                       on_chunk = {}) {
  if (o.n_ctx < 4)
    throw_error(Status::kInvalidArgument, "perplexity: a context of {} tokens leaves nothing to score", o.n_ctx);
  auto cache = model.make_cache(o.n_ctx, o.kv);  // checks n_ctx against the model's context
  std::int64_t chunks = static_cast<std::int64_t>(tokens.size()) / o.n_ctx;
  if (o.max_chunks >= 0) chunks = std::min(chunks, o.max_chunks);
  if (chunks == 0)
    throw_error(Status::kInvalidArgument, "perplexity: {} tokens do not fill one window of {}", tokens.size(), o.n_ctx);
  const std::int64_t first = o.n_ctx / 2, n_vocab = model.config().n_vocab;
  PerplexityResult r;
  double nll = 0, nll2 = 0;
  std::int64_t count = 0;
  std::vector<std::int32_t> window(static_cast<std::size_t>(o.n_ctx));
  for (std::int64_t c = 0; c < chunks; ++c) {
    const auto begin = tokens.begin() + c * o.n_ctx;
    std::copy(begin, begin + o.n_ctx, window.begin());
    if (o.bos) window[0] = *o.bos;
    cache.clear();
    const TensorF logits = model.forward(window, cache);
    for (std::int64_t t = first; t < o.n_ctx - 1; ++t) {
      const double lp = detail::log_prob(logits.data() + t * n_vocab, n_vocab, window[static_cast<std::size_t>(t + 1)]);
      r.token_logprob.push_back(lp);
      nll -= lp;
      nll2 += lp * lp;
      ++count;
    }
    r.final = detail::perplexity_estimate(nll, nll2, count, c + 1);
    r.running_ppl.push_back(r.final.ppl);
    if (on_chunk) on_chunk(c + 1, chunks, r.final);
  }
  return r;
}

}  // namespace qforge::models
